//! The JSON Web Token itself: its shape, its algorithm, its signature, its times, and the types
//! go-oidc insists on. Nothing here knows who the token names.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use std::time::Duration;

use super::{jwks::SigningKey, token::TokenError};

/// Real ID tokens are 1–4 KiB; the cap keeps hostile input from costing parse time and memory.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How far in the future `nbf` may be: go-oidc v2's fixed one minute, unchanged in v2.5.0, which
/// kube-apiserver 1.37 vendors (go-oidc v3 has five minutes, but Kubernetes vendors v2).
pub const NOT_BEFORE_SKEW: Duration = Duration::from_secs(60);

/// The claims of a token whose signature verifies with one of `candidates` (one key when the
/// token names its `kid`, every key otherwise). Only the signature is jsonwebtoken's job here;
/// every claim is checked by [`super::claims::identity`] with kube-apiserver's rules.
pub(super) fn verified_claims(
    token: &str,
    alg: Algorithm,
    candidates: &[SigningKey],
) -> Result<Map<String, Value>, TokenError> {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims::<&str>(&[]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    for key in candidates.iter().filter(|key| key.accepts(alg)) {
        match jsonwebtoken::decode::<Map<String, Value>>(token, key.decoding_key(), &validation) {
            Ok(data) => return Ok(data.claims),
            Err(error) => match error.into_kind() {
                ErrorKind::InvalidSignature => continue,
                ErrorKind::InvalidToken => {
                    return Err(TokenError::Malformed("it is not three JWT segments"));
                }
                ErrorKind::Base64(_) => {
                    return Err(TokenError::Malformed("a segment is not valid base64url"));
                }
                ErrorKind::Json(_) => {
                    return Err(TokenError::Malformed(
                        "the header or payload is not the expected JSON object",
                    ));
                }
                ErrorKind::Utf8(_) => {
                    return Err(TokenError::Malformed("a segment is not valid UTF-8"));
                }
                // Anything unexpected can only ever refuse a token.
                _ => return Err(TokenError::BadSignature),
            },
        }
    }
    Err(TokenError::BadSignature)
}

/// The name of the one algorithm verified without jsonwebtoken, which has no P-521.
pub(super) const ES512: &str = "ES512";

/// The claims of an ES512 token whose signature (`r || s`, 66 bytes each, as JWS has it)
/// verifies with one of `candidates`' P-521 keys. `payload` is the token's decoded payload, which
/// the signature covers.
pub(super) fn verified_es512_claims(
    token: &str,
    payload: JsonObject,
    candidates: &[SigningKey],
) -> Result<Map<String, Value>, TokenError> {
    use aws_lc_rs::signature::{ECDSA_P521_SHA512_FIXED, UnparsedPublicKey};
    let (signed, signature) = token
        .rsplit_once('.')
        .ok_or(TokenError::Malformed("it is not three JWT segments"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed("the signature segment is not valid base64url"))?;
    let verifies = candidates
        .iter()
        .filter_map(SigningKey::p521_point)
        .any(|point| {
            UnparsedPublicKey::new(&ECDSA_P521_SHA512_FIXED, point)
                .verify(signed.as_bytes(), &signature)
                .is_ok()
        });
    if verifies {
        Ok(payload)
    } else {
        Err(TokenError::BadSignature)
    }
}

/// go-oidc decodes the registered claims into typed fields and refuses the whole token when one
/// does not fit; these are the ones [`super::claims::identity`] does not look at itself.
pub(super) fn check_standard_claim_types(claims: &Map<String, Value>) -> Result<(), TokenError> {
    for name in ["sub", "nonce", "at_hash"] {
        if !matches!(
            claims.get(name),
            None | Some(Value::String(_) | Value::Null)
        ) {
            return Err(TokenError::Malformed(
                "a registered claim (sub, nonce, at_hash) is not a string",
            ));
        }
    }
    // Distributed claims: every named source must exist, as go-oidc requires.
    let names = match claims.get("_claim_names") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(names)) => names,
        Some(_) => return Err(TokenError::Malformed("_claim_names is not an object")),
    };
    let sources = claims.get("_claim_sources").and_then(Value::as_object);
    for source in names.values() {
        let known = source
            .as_str()
            .filter(|source| !source.is_empty())
            .is_some_and(|source| sources.is_some_and(|all| all.contains_key(source)));
        if !known {
            return Err(TokenError::Malformed(
                "_claim_names refers to a source missing from _claim_sources",
            ));
        }
    }
    Ok(())
}

/// A decoded JWT header or claim set.
pub(super) type JsonObject = Map<String, Value>;

/// Length cap, then exactly three base64url segments (the signature may be empty, so that an
/// unsigned `alg: none` token is refused for its algorithm), then JSON objects as header and
/// payload. The payload is not verified yet: only `iss` may be read from it before the signature.
pub(super) fn check_shape(token: &str) -> Result<(JsonObject, JsonObject), TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("it is longer than 16 KiB"));
    }
    let segments: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = segments.as_slice() else {
        return Err(TokenError::Malformed(
            "it does not consist of exactly three dot-separated segments",
        ));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(TokenError::Malformed(
            "the header or payload segment is empty",
        ));
    }
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("the header segment is not valid base64url"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed("the payload segment is not valid base64url"))?;
    URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed("the signature segment is not valid base64url"))?;
    let header = serde_json::from_slice(&header)
        .map_err(|_| TokenError::Malformed("the header is not a JSON object"))?;
    let payload = serde_json::from_slice(&payload)
        .map_err(|_| TokenError::Malformed("the payload is not a JSON object"))?;
    Ok((header, payload))
}

/// The header's algorithm, if it is one we accept; see the module docs for why a refused
/// algorithm is `BadSignature`.
pub(super) fn allowed_algorithm(
    header: &Map<String, Value>,
    allowed: &[Algorithm],
) -> Result<Algorithm, TokenError> {
    let Some(name) = header.get("alg").and_then(Value::as_str) else {
        return Err(TokenError::Malformed("the header has no alg"));
    };
    match name.parse::<Algorithm>() {
        Ok(alg) if allowed.contains(&alg) && alg.family() != AlgorithmFamily::Hmac => Ok(alg),
        _ => Err(TokenError::BadSignature),
    }
}

/// A NumericDate as go-oidc reads it: an integer, or a fractional number truncated toward zero,
/// also when written as a JSON string holding a number.
pub(super) fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    let number = match value {
        Value::Number(number) => number.clone(),
        Value::String(text) => serde_json::from_str::<serde_json::Number>(text).ok()?,
        _ => return None,
    };
    let seconds = match number.as_i64() {
        Some(seconds) => seconds,
        // Truncation is intended: it is what Go's int64(float64) does.
        None => number.as_f64().filter(|s| s.is_finite())?.trunc() as i64,
    };
    DateTime::from_timestamp(seconds, 0)
}
