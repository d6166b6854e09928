//! Everything about ID tokens: the issuers' keys ([`jwks`]) and the verdict on a token
//! ([`verify`]), with kube-apiserver's semantics.

pub mod authenticator;
pub mod authn_config;
pub mod cel;
mod claims;
mod distributed;
pub mod jwks;
pub mod jwt;
pub mod revocations;
mod signature;
pub mod token;
pub mod verify;
