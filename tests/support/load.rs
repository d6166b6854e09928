//! What the load-making tests and benchmarks share: an in-process admin client (one process
//! making thousands of calls costs the 2-core machine far less than a kubectl per call), the
//! operator's memory as the kernel reports it, and percentiles.

use std::fs;

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

/// A client with the cluster's admin credential, for setting up load, never for the calls a
/// test makes as a tenant.
pub async fn admin_client(kubeconfig: &str) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("read the admin kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a client configuration from the admin kubeconfig");
    Client::try_from(config).expect("a Kubernetes client")
}

/// A `/proc/PID/status` field in KiB: `VmRSS` (resident now) or `VmHWM` (the peak so far).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in kB in /proc/{pid}/status"))
}

pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// The nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
