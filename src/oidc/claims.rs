//! What a verified token's claims say, with kube-apiserver's rules: the issuer and audience, the
//! times, then the username, groups, uid and extra (by claim or CEL), required claims, and the
//! claim and user validation rules, in kube-apiserver's order.

use std::{cell::LazyCell, collections::BTreeMap};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{
    authn_config::{JwtAuthenticator, Mapping, Rule},
    cel, jwks,
    jwt::{JsonObject, NOT_BEFORE_SKEW, check_standard_claim_types, timestamp},
    token::{CREDENTIAL_ID_KEY, Identity, TokenError, credential_id},
};

/// Google's issuer, and the `iss` without a scheme that its older tokens carry and that both
/// kube-apiserver's routing and go-oidc accept for it.
pub(super) const GOOGLE_ISSUER: &str = "https://accounts.google.com";
pub(super) const GOOGLE_ISSUER_NO_SCHEME: &str = "accounts.google.com";

/// An evaluation error refuses the token, as it does in kube-apiserver.
fn evaluate(
    expression: &cel::Expression,
    input: &Value,
    what: &str,
) -> Result<kube_cel::cel::Value, TokenError> {
    expression
        .evaluate(input)
        .map_err(|problem| TokenError::RefusedByRule(format!("error evaluating {what}: {problem}")))
}

/// Validation rules must all be `true`; the first that is not refuses with its message, or its
/// expression when it has none.
fn check_rules(rules: &[Rule], input: &Value) -> Result<(), TokenError> {
    for rule in rules {
        let value = evaluate(&rule.expression, input, "a validation rule")?;
        match cel::as_bool(&value) {
            Some(true) => {}
            Some(false) => {
                return Err(TokenError::RefusedByRule(format!(
                    "validation expression '{}' failed: {}",
                    rule.expression.source(),
                    rule.message
                )));
            }
            None => {
                return Err(TokenError::RefusedByRule(
                    "validation expression must return a boolean".into(),
                ));
            }
        }
    }
    Ok(())
}

/// The verified `iss` must be the issuer exactly (a trailing slash matters).
pub(super) fn check_issuer(
    rules: &JwtAuthenticator,
    claims: &JsonObject,
) -> Result<(), TokenError> {
    let found = match claims.get("iss") {
        None => return Err(TokenError::MissingClaim("iss".into())),
        Some(Value::String(iss)) if *iss == rules.issuer => return Ok(()),
        // go-oidc's one exception, for Google's legacy tokens.
        Some(Value::String(iss))
            if rules.issuer == GOOGLE_ISSUER && iss == GOOGLE_ISSUER_NO_SCHEME =>
        {
            return Ok(());
        }
        Some(Value::String(iss)) => jwks::truncated(iss),
        Some(_) => "<not a string>".into(),
    };
    Err(TokenError::WrongIssuer {
        expected: rules.issuer.clone(),
        found,
    })
}

/// When a verified token stops and started being valid.
#[derive(Debug, Clone, Copy)]
pub(super) struct Validity {
    expires_at: DateTime<Utc>,
    issued_at: Option<DateTime<Utc>>,
}

/// What go-oidc's verifier and kube-apiserver's audience check decide before any claim is
/// mapped: the types go-oidc insists on, the audience, and the times. A distributed claim's JWT
/// passes the same checks.
///
/// `registered` is go-oidc's view of the claims ([`super::jwt::Payload::registered`]); `claims`
/// the claim map, for `azp`, which go-oidc does not decode.
pub(super) fn validity(
    cfg: &JwtAuthenticator,
    claims: &JsonObject,
    registered: &JsonObject,
) -> Result<Validity, TokenError> {
    check_standard_claim_types(registered)?;
    check_audience(cfg, registered, claims)?;

    let expires_at = match registered.get("exp") {
        None | Some(Value::Null) => return Err(TokenError::MissingClaim("exp".into())),
        Some(value) => timestamp(value).ok_or_else(|| TokenError::MissingClaim("exp".into()))?,
    };
    let now = Utc::now();
    // go-oidc: `Expiry.Before(now)`, without leeway.
    if expires_at < now {
        return Err(TokenError::Expired {
            expired_at: Some(expires_at),
        });
    }
    match registered.get("nbf") {
        None | Some(Value::Null) => {}
        Some(value) => {
            let not_before =
                timestamp(value).ok_or_else(|| TokenError::MissingClaim("nbf".into()))?;
            if now + NOT_BEFORE_SKEW < not_before {
                return Err(TokenError::NotYetValid);
            }
        }
    }
    // Not checked against the clock (kube-apiserver does not), but go-oidc refuses a token
    // whose `iat` is not a time.
    let issued_at = match registered.get("iat") {
        None => None,
        Some(value) => {
            Some(timestamp(value).ok_or_else(|| TokenError::MissingClaim("iat".into()))?)
        }
    };
    Ok(Validity {
        expires_at,
        issued_at,
    })
}

/// The user a [`validity`]-checked token names, in kube-apiserver's order: username, groups,
/// uid and extra, required claims, claim rules, user rules. A distributed groups claim has been
/// resolved into `claims` by then, as kube-apiserver's claim resolver does before the mappings.
pub(super) fn identity(
    cfg: &JwtAuthenticator,
    claims: &JsonObject,
    validity: Validity,
) -> Result<Identity, TokenError> {
    let strict = cfg.strictness;
    let Validity {
        expires_at,
        issued_at,
    } = validity;
    // CEL sees the claims as one JSON object, as kube-apiserver's unstructured conversion; the
    // copy is made only for a configuration with expressions or rules.
    let as_json = LazyCell::new(|| Value::Object(claims.clone()));

    let username = match &cfg.username {
        Mapping::Claim { claim, prefix } => {
            // Like kube-apiserver, which decodes the claim into a Go string: null reads as "".
            let name = match claims.get(claim) {
                Some(Value::String(name)) => name.as_str(),
                Some(Value::Null) => "",
                _ => return Err(TokenError::MissingClaim(claim.clone())),
            };
            if strict.strict_names && name.is_empty() {
                return Err(TokenError::MissingClaim(claim.clone()));
            }
            // An email is only an identity if the issuer did not say it is unverified; the
            // claim must then be a JSON boolean `true` (not the string "true").
            if claim == "email" {
                match claims.get("email_verified") {
                    None | Some(Value::Bool(true)) => {}
                    Some(_) => return Err(TokenError::MissingClaim("email_verified".into())),
                }
            }
            format!("{prefix}{name}")
        }
        Mapping::Expression(expression) => {
            let value = evaluate(expression, &as_json, "claimMappings.username.expression")?;
            match cel::as_string(&value) {
                Some(name) if name.is_empty() => {
                    return Err(TokenError::RefusedByRule(
                        "empty username via CEL expression is not allowed".into(),
                    ));
                }
                Some(name) => name,
                None => {
                    return Err(TokenError::RefusedByRule(
                        "username claim expression must return a string".into(),
                    ));
                }
            }
        }
    };
    if strict.strict_names && username.chars().any(char::is_control) {
        return Err(TokenError::Malformed(
            "the username claim contains control characters",
        ));
    }

    let groups = match &cfg.groups {
        None => Vec::new(),
        Some(Mapping::Claim { claim, prefix }) => groups(claims, claim)?
            .into_iter()
            .map(|name| format!("{prefix}{name}"))
            .collect(),
        Some(Mapping::Expression(expression)) => {
            let value = evaluate(expression, &as_json, "claimMappings.groups.expression")?;
            cel::as_string_list(&value).ok_or_else(|| {
                TokenError::RefusedByRule(
                    "group claim expression must return a string or a list of strings".into(),
                )
            })?
        }
    };
    if strict.strict_names && groups.iter().any(|name| name.chars().any(char::is_control)) {
        return Err(TokenError::Malformed(
            "a group in the groups claim contains control characters",
        ));
    }

    let uid = match &cfg.uid {
        None => String::new(),
        Some(Mapping::Claim { claim, .. }) => match claims.get(claim) {
            Some(Value::String(uid)) => uid.clone(),
            Some(Value::Null) => String::new(),
            _ => return Err(TokenError::MissingClaim(claim.clone())),
        },
        Some(Mapping::Expression(expression)) => {
            let value = evaluate(expression, &as_json, "claimMappings.uid.expression")?;
            cel::as_string(&value).ok_or_else(|| {
                TokenError::RefusedByRule("uid claim expression must return a string".into())
            })?
        }
    };

    let mut extra = BTreeMap::new();
    if let Some(Value::String(jti)) = claims.get("jti")
        && !jti.is_empty()
    {
        extra.insert(CREDENTIAL_ID_KEY.to_owned(), vec![credential_id(jti)]);
    }
    for (key, expression) in &cfg.extra {
        let value = evaluate(expression, &as_json, "claimMappings.extra")?;
        let values = cel::as_string_list(&value).ok_or_else(|| {
            TokenError::RefusedByRule(format!(
                "extra mapping {key}: expression must return a string or a list of strings"
            ))
        })?;
        if !values.is_empty() {
            extra.insert(key.clone(), values);
        }
    }

    for (claim, required) in &cfg.required_claims {
        match claims.get(claim) {
            Some(Value::String(value)) if value == required => {}
            _ => {
                return Err(TokenError::RefusedByRule(format!(
                    "required claim {claim} is missing or does not have the required value"
                )));
            }
        }
    }
    if !cfg.claim_rules.is_empty() {
        check_rules(&cfg.claim_rules, &as_json)?;
    }
    if !cfg.user_rules.is_empty() {
        let user = serde_json::json!({
            "username": username,
            "uid": uid,
            "groups": groups,
            "extra": extra,
        });
        check_rules(&cfg.user_rules, &user)?;
    }

    Ok(Identity {
        username,
        groups,
        uid,
        extra,
        expires_at,
        issued_at,
    })
}

/// `aud` (one string or a list of strings) must contain one of the audiences
/// (`audienceMatchPolicy: MatchAny`). kube-apiserver ignores `azp`;
/// [`crate::config::Strictness::require_authorized_party`] adds OIDC's rule for several
/// audiences.
fn check_audience(
    rules: &JwtAuthenticator,
    registered: &JsonObject,
    claims: &JsonObject,
) -> Result<(), TokenError> {
    let expected = &rules.audiences;
    let audiences: Vec<&str> = match registered.get("aud") {
        None => return Err(TokenError::MissingClaim("aud".into())),
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Null) => vec![""],
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or(TokenError::Malformed(
                "the aud claim is not a list of strings",
            ))?,
        Some(_) => {
            return Err(TokenError::Malformed(
                "the aud claim is not a string or a list of strings",
            ));
        }
    };
    let mut ok = audiences
        .iter()
        .any(|aud| expected.iter().any(|e| e == aud));
    let azp_required = rules.strictness.require_authorized_party;
    if azp_required && audiences.len() > 1 {
        let azp = claims.get("azp").and_then(Value::as_str);
        ok &= expected.iter().any(|e| Some(e.as_str()) == azp);
    }
    if ok {
        Ok(())
    } else {
        Err(TokenError::WrongAudience {
            expected: expected.join(", "),
            azp_required,
        })
    }
}

/// The groups claim as kube-apiserver reads it, after its claim resolver: absent or `null` is no
/// groups, a string is one group, a list of strings is the groups (a `null` item reads as "").
fn groups(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, TokenError> {
    let unusable = || TokenError::MissingClaim(claim.to_owned());
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(group)) => Ok(vec![group.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(group) => Some(group.clone()),
                Value::Null => Some(String::new()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(unusable),
        Some(_) => Err(unusable()),
    }
}
