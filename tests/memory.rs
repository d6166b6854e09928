//! Unrelated Secrets must not cost the operator memory: it watches Secrets as metadata only.
//! 20,000 Secrets of 2 KiB each are created in the namespace the operator watches, and its
//! resident memory (VmRSS) may grow by less than 10 MiB. The namespace, and with it the Secrets,
//! is deleted at the end. The operator's own heap series are checked against the same process.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use support::{
    Namespace, cluster, id_token,
    load::{admin_client, create_unrelated_secrets, rss_kib},
    metric,
    operator::{Issuer, Operator},
    requests::{apply_request, put_token_secret, wait_for_reason},
};

const SECRETS: usize = 20_000;
const SECRET_BYTES: usize = 2048;
/// Creates in flight at once: enough to keep the API server busy, few enough for its
/// max-requests-inflight.
const CONCURRENCY: usize = 64;
const MAX_GROWTH_KIB: u64 = 10 * 1024;

#[test]
fn twenty_thousand_unrelated_secrets_cost_less_than_10_mib() {
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "memory");
    let ns = namespace.name.as_str();
    let operator = Operator::start(cluster, ns, Issuer::Main, &[]);
    // A request waiting for its token Secret: it becomes Issued only when the Secret watch
    // delivers that Secret, which comes after all the unrelated ones.
    apply_request(
        cluster,
        ns,
        "waiting",
        "tokenSecretRef: {name: waiting-token}",
    );
    wait_for_reason(cluster, ns, "waiting", "TokenSecretNotFound");
    thread::sleep(Duration::from_secs(2));
    let pid = operator.pid();
    let before = rss_kib(pid);

    // Sample RSS while the Secrets stream in, to catch a peak as well as the end state.
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (Arc::clone(&peak), Arc::clone(&sampling));
        thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let start = Instant::now();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(async {
            let client = admin_client(&cluster.kubeconfig).await;
            create_unrelated_secrets(&client, ns, SECRETS, SECRET_BYTES, CONCURRENCY).await;
        });
    let created_in = start.elapsed();
    put_token_secret(
        cluster,
        ns,
        "waiting-token",
        "token",
        &id_token(cluster, "alice"),
    );
    wait_for_reason(cluster, ns, "waiting", "Issued");
    thread::sleep(Duration::from_secs(3));
    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("the RSS sampler");
    let after = rss_kib(pid);
    let peak = peak.load(Ordering::Relaxed).max(after);

    let growth = peak.saturating_sub(before);
    println!(
        "{SECRETS} Secrets of {SECRET_BYTES} B created in {:.1} s; operator RSS before {before} KiB, \
         peak {peak} KiB, after {after} KiB: growth {growth} KiB at peak, {} KiB at the end",
        created_in.as_secs_f64(),
        after.saturating_sub(before)
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "the operator's RSS grew by {growth} KiB (before {before}, peak {peak}); at most {MAX_GROWTH_KIB} KiB allowed"
    );

    // The heap series the sizing figures are read from describe this process: live objects
    // within the allocator's resident pages, within the process's resident size.
    let text = operator.metrics();
    let allocated = metric(&text, "kubeconfig_operator_heap_allocated_bytes", "");
    let resident = metric(&text, "kubeconfig_operator_heap_resident_bytes", "");
    let rss = (rss_kib(pid) * 1024) as f64;
    assert!(
        0.0 < allocated && allocated <= resident && resident <= rss,
        "allocated {allocated} B, the heap's resident pages {resident} B, the process's {rss} B (a series missing from the metrics reads 0):\n{text}"
    );
}
