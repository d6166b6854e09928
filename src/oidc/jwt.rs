//! The JSON Web Token itself: its shape, its algorithm, its signature, its times, and the types
//! go-oidc insists on. Nothing here knows who the token names.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::{fmt, sync::Arc, time::Duration};

use super::{
    jwks::{SignatureAlgorithm, SigningKey},
    token::TokenError,
};

/// Real ID tokens are 1–4 KiB; the cap keeps hostile input from costing parse time and memory.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How far in the future `nbf` may be: go-oidc v2's fixed one minute, unchanged in v2.5.0, which
/// kube-apiserver 1.37 vendors (go-oidc v3 has five minutes, but Kubernetes vendors v2).
pub const NOT_BEFORE_SKEW: Duration = Duration::from_secs(60);

/// Whether `signature` over `signed` (the token's first two segments, [`Decoded::signed`])
/// verifies with one of `candidates` (one key when the token names its `kid`, every key
/// otherwise). The claims are [`check_shape`]'s, and every one is checked by [`super::claims`]
/// with kube-apiserver's rules; jsonwebtoken's `decode` would parse the payload again, into a
/// struct that refuses a duplicated `exp`, which Go's encoding/json takes (the last one wins).
pub(super) fn verify_signature(
    signed: &str,
    signature: &[u8],
    alg: SignatureAlgorithm,
    candidates: &[Arc<SigningKey>],
) -> Result<(), TokenError> {
    if candidates
        .iter()
        .any(|key| key.verifies(alg, signed.as_bytes(), signature))
    {
        Ok(())
    } else {
        Err(TokenError::BadSignature)
    }
}

/// The one algorithm jsonwebtoken cannot name: it has no P-521.
pub(super) const ES512: &str = "ES512";

/// The header members go-jose decodes into types of its own when it parses a JWS (its header's
/// `sanitized`), refusing the token when one does not fit: `jwk` must be a key, `x5c` a chain of
/// standard-base64 DER certificates, `nonce` a string (`alg` and `kid` are checked where they are
/// used). A null member is skipped, and every other member may hold any JSON (a numeric `typ`
/// passes kube-apiserver).
pub(super) fn check_header_members(header: &JsonObject) -> Result<(), TokenError> {
    use base64::engine::general_purpose::STANDARD;
    if let Some(jwk) = header.get("jwk").filter(|jwk| !jwk.is_null())
        && jsonwebtoken::jwk::Jwk::deserialize(jwk).is_err()
    {
        return Err(TokenError::Malformed(
            "the header's jwk is not a JSON Web Key",
        ));
    }
    if let Some(chain) = header.get("x5c").filter(|chain| !chain.is_null()) {
        let certificate = |value: &Value| {
            let der = STANDARD.decode(value.as_str()?).ok()?;
            x509_parser::parse_x509_certificate(&der)
                .ok()
                .filter(|(rest, _)| rest.is_empty())
                .map(|_| ())
        };
        let parses = match chain {
            Value::Array(certificates) => certificates.iter().all(|c| certificate(c).is_some()),
            _ => false,
        };
        if !parses {
            return Err(TokenError::Malformed(
                "the header's x5c is not a chain of X.509 certificates",
            ));
        }
    }
    if !matches!(
        header.get("nonce"),
        None | Some(Value::Null | Value::String(_))
    ) {
        return Err(TokenError::Malformed("the header's nonce is not a string"));
    }
    Ok(())
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

/// A token's three segments, decoded; nothing in them is verified yet.
#[derive(Debug)]
pub(super) struct Decoded<'a> {
    pub header: JsonObject,
    pub payload: Payload,
    pub signature: Vec<u8>,
    /// The signing input: the token's header and payload segments with the dot between.
    pub signed: &'a str,
}

/// A token's payload as kube-apiserver reads it, twice over.
#[derive(Debug)]
pub(super) struct Payload {
    /// Each claim by its exact name, the last of duplicates: kube-apiserver's claim map, which
    /// claim mappings, CEL and distributed claims read.
    pub claims: JsonObject,
    /// The claims go-oidc decodes into its token struct (the issuer, the times, the audience and
    /// the types it insists on), under their JSON names, as Go's encoding/json fills that struct:
    /// it matches member names case-insensitively (Unicode folding: `EXP`, `iſs`) and the last
    /// match wins, so `{"exp": <future>, "EXP": <past>}` has expired for kube-apiserver.
    pub registered: JsonObject,
}

/// How go-oidc's token struct holds a field: what decodes into it, and what a null does.
#[derive(Clone, Copy)]
enum GoField {
    /// `string`: a null leaves it as it was.
    Text,
    /// `jsonTime`: a NumericDate; a null does not decode.
    Time,
    /// `*jsonTime`: as `Time`, and a null resets it.
    OptionalTime,
    /// `audience`: a string or a list of strings; a null reads as `""`.
    Audience,
    /// `map[string]string`: a null resets it, each object adds to it.
    Names,
    /// `map[string]claimSource`: as `Names`, with objects for values.
    Sources,
}

/// go-oidc's token struct by JSON name, which kube-apiserver's issuer check (`untrustedIssuer`)
/// and go-oidc's verifier decode with Go's encoding/json.
const REGISTERED: [(&str, GoField); 10] = [
    ("iss", GoField::Text),
    ("sub", GoField::Text),
    ("aud", GoField::Audience),
    ("exp", GoField::Time),
    ("iat", GoField::Time),
    ("nbf", GoField::OptionalTime),
    ("nonce", GoField::Text),
    ("at_hash", GoField::Text),
    ("_claim_names", GoField::Names),
    ("_claim_sources", GoField::Sources),
];

impl GoField {
    /// Whether `value` decodes into this field without an error.
    fn decodes(self, value: &Value) -> bool {
        match (self, value) {
            (Self::Time, value) => timestamp(value).is_some(),
            (Self::OptionalTime, value) => value.is_null() || timestamp(value).is_some(),
            (Self::Text | Self::Audience | Self::Names | Self::Sources, Value::Null)
            | (Self::Text | Self::Audience, Value::String(_)) => true,
            (Self::Audience, Value::Array(items)) => items.iter().all(Value::is_string),
            (Self::Names, Value::Object(names)) => {
                names.values().all(|v| v.is_null() || v.is_string())
            }
            (Self::Sources, Value::Object(sources)) => {
                sources.values().all(|v| v.is_null() || v.is_object())
            }
            _ => false,
        }
    }

    /// The value the field holds once every one of `matching` (in document order, at least one)
    /// is decoded into it.
    fn holds(self, matching: &[&Value]) -> Value {
        match self {
            Self::Text => matching
                .iter()
                .rev()
                .find(|value| !value.is_null())
                .or(matching.last())
                .map_or(Value::Null, |value| (*value).clone()),
            Self::Names | Self::Sources => {
                matching
                    .iter()
                    .fold(Value::Null, |map, value| match (map, value) {
                        (Value::Object(mut map), Value::Object(more)) => {
                            map.extend(more.clone());
                            Value::Object(map)
                        }
                        (_, value) => (*value).clone(),
                    })
            }
            Self::Time | Self::OptionalTime | Self::Audience => matching
                .last()
                .map_or(Value::Null, |value| (*value).clone()),
        }
    }
}

/// Whether Go's encoding/json decodes the member `member` into the field named `field` (ASCII
/// lower case and `_`): `bytes.EqualFold`, whose Unicode folding adds the Kelvin sign to `k` and
/// the long s to `s`.
fn go_field_matches(member: &str, field: &str) -> bool {
    if member.is_ascii() {
        return member.eq_ignore_ascii_case(field);
    }
    // A folding character is never shorter in UTF-8 than the ASCII letter it folds to, so a
    // shorter member cannot match: most members are refused before their characters are counted.
    member.len() >= field.len()
        && member.chars().count() == field.len()
        && member.chars().zip(field.chars()).all(|(m, f)| {
            m.to_ascii_lowercase() == f
                || (f == 'k' && m == '\u{212A}')
                || (f == 's' && m == '\u{17F}')
        })
}

/// go-oidc's struct from the payload's members in document order (see [`Payload::registered`]).
/// Each matching member is decoded in turn, so one that does not decode refuses the token even
/// when a later one overrides it; the value that stays is checked by the callers, as before.
fn registered(members: &[(String, Value)]) -> Result<JsonObject, TokenError> {
    // One pass over the members: folding is an equivalence, so a member matches one field at most.
    let mut matching: [Vec<&Value>; REGISTERED.len()] = Default::default();
    for (member, value) in members {
        if let Some(at) = REGISTERED
            .iter()
            .position(|(field, _)| go_field_matches(member, field))
        {
            matching[at].push(value);
        }
    }
    let mut view = JsonObject::new();
    for ((name, field), matching) in REGISTERED.iter().zip(&matching) {
        let Some((_, earlier)) = matching.split_last() else {
            continue;
        };
        if !earlier.iter().all(|value| field.decodes(value)) {
            return Err(TokenError::Malformed(
                "a registered claim is given more than once, once with a value go-oidc cannot decode",
            ));
        }
        view.insert((*name).to_owned(), field.holds(matching));
    }
    Ok(view)
}

/// A JSON object's members in document order, duplicates kept, for [`registered`].
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Members;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

/// Length cap, then exactly three base64url segments (the signature may be empty, so that an
/// unsigned `alg: none` token is refused for its algorithm), then JSON objects as header and
/// payload. The payload is not verified yet: only the issuer may be read from it before the
/// signature.
pub(super) fn check_shape(token: &str) -> Result<Decoded<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("it is longer than 16 KiB"));
    }
    let segments: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = *segments.as_slice() else {
        return Err(TokenError::Malformed(
            "it does not consist of exactly three dot-separated segments",
        ));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(TokenError::Malformed(
            "the header or payload segment is empty",
        ));
    }
    let signed = &token[..header.len() + 1 + payload.len()];
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("the header segment is not valid base64url"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed("the payload segment is not valid base64url"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed("the signature segment is not valid base64url"))?;
    let header = serde_json::from_slice(&header)
        .map_err(|_| TokenError::Malformed("the header is not a JSON object"))?;
    let Members(members) = serde_json::from_slice(&payload)
        .map_err(|_| TokenError::Malformed("the payload is not a JSON object"))?;
    let registered = registered(&members)?;
    Ok(Decoded {
        header,
        payload: Payload {
            claims: members.into_iter().collect(),
            registered,
        },
        signature,
        signed,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_match_fields_as_go_folds_them() {
        for (member, field) in [
            ("exp", "exp"),
            ("EXP", "exp"),
            ("At_Hash", "at_hash"),
            ("\u{212A}", "k"),
            ("i\u{17F}s", "iss"),
            ("I\u{17F}S", "iss"),
        ] {
            assert!(
                go_field_matches(member, field),
                "{member} should match {field}"
            );
        }
        for (member, field) in [
            ("ex", "exp"),
            ("expp", "exp"),
            ("athash", "at_hash"),
            // Dotless i folds to no ASCII letter in Go's tables.
            ("\u{131}ss", "iss"),
            ("e\u{301}xp", "exp"),
        ] {
            assert!(
                !go_field_matches(member, field),
                "{member} should not match {field}"
            );
        }
    }

    #[test]
    fn the_last_of_duplicated_registered_claims_is_kept() {
        let Members(members) =
            serde_json::from_str(r#"{"exp": 1, "email": "a", "EXP": 2, "iss": "x", "ISS": null}"#)
                .unwrap();
        let view = registered(&members).unwrap();
        assert_eq!(view["exp"], 2);
        // A null leaves a Go string as it was.
        assert_eq!(view["iss"], "x");
        assert!(!view.contains_key("email"));
    }
}
