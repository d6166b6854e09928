//! What each Ready request costs the controller's long-lived state, in bytes asked of the
//! allocator: the store, the index and the renewal wake-up. The operator keeps every request for
//! as long as it exists, so these bytes times the number of requests are most of its memory
//! (README, "Sizing"). Counted per thread, so tests running beside this one do not add to it.
//! Beside them, what kube-runtime's store holds for the same requests watched for their
//! metadata alone (name, namespace, uid, resourceVersion): the whole stored request costs about
//! as much.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    api::{PartialObjectMeta, PartialObjectMetaExt as _},
    runtime::reflector,
};

use super::*;
use crate::crd::KubeconfigRequestStatus;

thread_local! {
    static ASKED: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: isize) {
    // Without a destructor, a const thread-local outlives the thread's other state; `try_with`
    // only guards the allocator against a thread torn down around it.
    let _ = ASKED.try_with(|asked| asked.set(asked.get() + bytes));
}

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size().cast_signed());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-layout.size().cast_signed());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.cast_signed() - layout.size().cast_signed());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Bytes this thread holds more after `work` than before, per request.
fn held_per_request(requests: usize, work: impl FnOnce()) -> isize {
    let before = ASKED.with(Cell::get);
    work();
    (ASKED.with(Cell::get) - before) / requests.cast_signed()
}

/// As many requests as the sizing table's first row, so the hash tables are as full as there.
const REQUESTS: usize = 10_000;
const NAMESPACE: &str = "bench-memory-1765000000";

#[tokio::test]
async fn a_ready_request_costs_the_controller_about_1300_bytes() {
    // A status as the operator writes it, for ID-token requests as the issuance benchmark
    // makes them: each with its token Secret and its kubeconfig Secret.
    let (_, status) = first_issue(request(json!({})), alice_token()).await;
    let status: KubeconfigRequestStatus = serde_json::from_value(status).unwrap();
    let requests: Vec<KubeconfigRequest> = (0..REQUESTS)
        .map(|i| {
            let mut request =
                request(json!({ "tokenSecretRef": { "name": format!("token-{i}") } }));
            request.metadata.name = Some(format!("r-{i}"));
            request.metadata.namespace = Some(NAMESPACE.into());
            request.metadata.uid = Some(format!("0b4a7c52-1f0e-4c8e-9a51-{i:012}"));
            request.metadata.resource_version = Some((1_200_000 + i).to_string());
            request.status = Some(KubeconfigRequestStatus {
                secret_name: Some(format!("r-{i}-kubeconfig")),
                ..status.clone()
            });
            request
        })
        .collect();
    let (ctx, _api) = context();
    let (store, mut writer) = reflector::store::<StoredRequest>();

    let stored = held_per_request(REQUESTS, || {
        for request in &requests {
            writer.apply_watcher_event(&watcher::Event::Apply(request.clone().into()));
        }
    });
    let indexed = held_per_request(REQUESTS, || {
        for (i, request) in requests.iter().enumerate() {
            ctx.index.observe(&watcher::Event::Apply(request.clone()));
            let written = (1_300_000 + i).to_string();
            ctx.index
                .wrote(NAMESPACE, &format!("r-{i}-kubeconfig"), Some(written));
        }
    });
    let woken = held_per_request(REQUESTS, || {
        let at = tokio::time::Instant::now() + Duration::from_secs(3600);
        for request in &requests {
            let filed = ctx.index.filed(&stored::reference(request)).unwrap();
            ctx.renewals.schedule(filed, at);
        }
    });

    // What a store of kube-runtime's holds for a request watched for its metadata alone (name,
    // namespace, uid, resourceVersion, as a metadata-only watch delivers it).
    let (metadata_store, mut metadata_writer) =
        reflector::store::<PartialObjectMeta<KubeconfigRequest>>();
    let metadata_only = held_per_request(REQUESTS, || {
        for request in &requests {
            let meta = ObjectMeta {
                name: request.metadata.name.clone(),
                namespace: request.metadata.namespace.clone(),
                uid: request.metadata.uid.clone(),
                resource_version: request.metadata.resource_version.clone(),
                ..ObjectMeta::default()
            };
            metadata_writer.apply_watcher_event(&watcher::Event::Apply(
                meta.into_response_partial::<KubeconfigRequest>(),
            ));
        }
    });

    assert_eq!(
        (store.state().len(), metadata_store.state().len()),
        (REQUESTS, REQUESTS)
    );
    let total = stored + indexed + woken;
    println!(
        "bytes per request: store {stored} (its metadata alone {metadata_only}), index {indexed}, wake-up {woken}: {total}"
    );
    assert!(
        total <= 1_320,
        "store {stored} + index {indexed} + wake-up {woken} = {total} bytes per request"
    );
    assert!(
        stored <= metadata_only + 20,
        "the store holds {stored} bytes per request, {metadata_only} for the metadata alone"
    );
}
