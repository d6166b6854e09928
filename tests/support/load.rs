//! What the load-making tests and benchmarks share: an in-process admin client (one process
//! making thousands of calls costs the 2-core machine far less than a kubectl per call), the
//! operator's memory as the kernel reports it, and percentiles.

use std::{collections::BTreeMap, fs};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
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

/// How many sockets the process holds open: its `/proc/PID/fd` entries that are sockets.
pub fn socket_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(Result::ok)
        .filter(|fd| {
            fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// The nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Creates `count` Secrets `unrelated-<i>` of `bytes` bytes each in `namespace`, `concurrency`
/// at a time: Secrets no request names, which must cost the operator nothing.
pub async fn create_unrelated_secrets(
    client: &Client,
    namespace: &str,
    count: usize,
    bytes: usize,
    concurrency: usize,
) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let payload: Vec<u8> = format!("{i:08}").bytes().cycle().take(bytes).collect();
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("unrelated-{i}")),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([("blob".to_owned(), ByteString(payload))])),
                    ..Secret::default()
                };
                api.create(&PostParams::default(), &secret)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
        .expect("create the unrelated Secrets");
}
