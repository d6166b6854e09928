//! kubeconfig-operator: turns a Dex ID token into a kubeconfig, over HTTP (`GET /kube-config`) or
//! through a `KubeconfigRequest` custom resource. The token's path through the crate is
//! `oidc` (validation) → `confirm` (the API server's verdict) → `kubeconfig` (rendering) →
//! `server` (download) or `controller` (Secret).

pub mod audit;
pub mod ca;
mod capacity;
pub mod config;
pub mod confirm;
pub mod controller;
pub mod crd;
pub mod drift;
pub mod events;
pub mod kubeconfig;
pub mod metrics;
pub mod oidc;
pub mod server;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verdicts;
pub mod yaml;
