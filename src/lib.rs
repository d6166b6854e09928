//! kubeconfig-operator: turns a Dex ID token into a kubeconfig, over HTTP (`GET /kube-config`) or
//! through a `KubeconfigRequest` custom resource. The token's path through the crate is
//! `token` (validation) → `kubeconfig` (rendering) → `server` (download) or `reconciler` (Secret).

pub mod config;
pub mod crd;
pub mod jwks;
pub mod kubeconfig;
pub mod metrics;
pub mod reconciler;
pub mod server;
pub mod telemetry;
pub mod token;
pub mod yaml;
