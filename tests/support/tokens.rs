//! Hand-made JWT pieces for tests that play the attacker. Signing lives in the crate's shared
//! test issuer (`kubeconfig_operator::testing`).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
