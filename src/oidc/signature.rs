//! A JWT's claims once one of its issuer's published keys vouches for them: the algorithm, the
//! header's `crit` and `kid`, the key lookup, the signature, and `iss`. Both an ID token and the
//! JWT a distributed claim's endpoint returns go through here, as kube-apiserver verifies both
//! with go-oidc's `IDTokenVerifier`.

use serde_json::Value;

use super::{
    authn_config::JwtAuthenticator,
    claims,
    jwks::{self, KeySet, SignatureAlgorithm},
    jwt::{Decoded, ES512, Payload, allowed_algorithm, check_header_members, verify_signature},
    token::TokenError,
};

/// The payload of a token's decoded segments ([`super::jwt::check_shape`]), returned only when
/// the signature by one of `keys` covers it and its issuer (as go-oidc reads it) is
/// `rules.issuer`.
pub(super) async fn signed_payload(
    rules: &JwtAuthenticator,
    keys: &KeySet,
    Decoded {
        header,
        payload,
        signature,
        signed,
    }: Decoded<'_>,
) -> Result<Payload, TokenError> {
    let alg = if rules.verifies_es512 && header.get("alg").and_then(Value::as_str) == Some(ES512) {
        SignatureAlgorithm::Es512
    } else {
        SignatureAlgorithm::Jws(allowed_algorithm(&header, &rules.algorithms)?)
    };
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "the header lists critical extensions (crit), which are not supported",
        ));
    }
    // go-jose skips a null header member, so a null kid names no key.
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(TokenError::Malformed("the header's kid is not a string")),
    };
    check_header_members(&header)?;

    let candidates = match kid {
        Some(kid) => match keys.find(kid).await {
            Ok(Some(key)) => vec![key],
            Ok(None) => return Err(TokenError::UnknownKey(jwks::truncated(kid))),
            Err(error) => return Err(TokenError::IssuerUnavailable(error)),
        },
        None if rules.strictness.require_key_id => {
            return Err(TokenError::UnknownKey("<none in the header>".into()));
        }
        // go-oidc tries every key when the token names none.
        None => keys.all().await.map_err(TokenError::IssuerUnavailable)?,
    };
    verify_signature(signed, &signature, alg, &candidates)?;
    claims::check_issuer(rules, &payload.registered)?;
    Ok(payload)
}
