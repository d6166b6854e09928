//! kube-apiserver 1.37's `validateJWTAuthenticator`, rule by rule and message by message, turning a
//! valid file into [`JwtAuthenticator`]s with their CEL expressions compiled.

use std::{collections::HashSet, fmt};

use super::{
    CONFIG_FILE_ALGORITHMS, CertificateAuthority, JwtAuthenticator, MAX_ISSUERS, Mapping, Rule,
    schema::{File, FileClaimRule, FileExtra, FileIssuer, FileJwt, FilePrefixed, FileUserRule},
};
use crate::{
    config::Strictness,
    oidc::cel::{Expression, Variable},
};

/// One validation error, printed as `k8s.io/apimachinery`'s `field.Error` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    kind: Kind,
    detail: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Required,
    Invalid(String),
    Duplicate(String),
    TooMany(usize),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Required => write!(f, "{}: Required value", self.field)?,
            Kind::Invalid(value) => write!(f, "{}: Invalid value: {value}", self.field)?,
            Kind::Duplicate(value) => write!(f, "{}: Duplicate value: {value}", self.field)?,
            Kind::TooMany(count) => write!(f, "{}: Too many: {count}", self.field)?,
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

fn quoted(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

fn required(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        kind: Kind::Required,
        detail: detail.to_owned(),
    }
}

fn invalid(field: &str, value: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        kind: Kind::Invalid(quoted(value)),
        detail: detail.to_owned(),
    }
}

fn duplicate(field: &str, value: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        kind: Kind::Duplicate(quoted(value)),
        detail: String::new(),
    }
}

pub(super) fn validate(
    file: &File,
    strictness: Strictness,
) -> Result<Vec<JwtAuthenticator>, Vec<FieldError>> {
    let mut errors = Vec::new();
    if file.jwt.len() > MAX_ISSUERS {
        return Err(vec![FieldError {
            field: "jwt".into(),
            kind: Kind::TooMany(file.jwt.len()),
            detail: format!("must have at most {MAX_ISSUERS} items"),
        }]);
    }
    let mut authenticators = Vec::new();
    let mut issuers = HashSet::new();
    let mut discovery_urls = HashSet::new();
    for (i, jwt) in file.jwt.iter().enumerate() {
        let path = format!("jwt[{i}]");
        if let Some(authenticator) = validate_jwt(jwt, &path, strictness, &mut errors) {
            authenticators.push(authenticator);
        }
        if !issuers.insert(jwt.issuer.url.as_str()) {
            errors.push(duplicate(&format!("{path}.issuer.url"), &jwt.issuer.url));
        }
        if let Some(discovery) = jwt
            .issuer
            .discovery_url
            .as_deref()
            .filter(|d| !d.is_empty())
            && !discovery_urls.insert(discovery)
        {
            errors.push(duplicate(&format!("{path}.issuer.discoveryURL"), discovery));
        }
    }
    if let Some(anonymous) = &file.anonymous
        && !anonymous.enabled
        && !anonymous.conditions.is_empty()
    {
        errors.push(FieldError {
            field: "anonymous.conditions".into(),
            kind: Kind::Invalid("<conditions>".into()),
            detail: "enabled should be set to true when conditions are defined".into(),
        });
    }
    if errors.is_empty() {
        Ok(authenticators)
    } else {
        Err(errors)
    }
}

fn validate_jwt(
    jwt: &FileJwt,
    path: &str,
    strictness: Strictness,
    errors: &mut Vec<FieldError>,
) -> Option<JwtAuthenticator> {
    let before = errors.len();
    let issuer = &jwt.issuer;
    let issuer_path = format!("{path}.issuer");
    if issuer.url.is_empty() {
        errors.push(required(&format!("{issuer_path}.url"), "URL is required"));
    } else {
        validate_url(&issuer.url, &format!("{issuer_path}.url"), errors);
    }
    let discovery_url = issuer.discovery_url.clone().filter(|d| !d.is_empty());
    if let Some(discovery) = &discovery_url {
        let field = format!("{issuer_path}.discoveryURL");
        if !issuer.url.is_empty()
            && issuer.url.trim_end_matches('/') == discovery.trim_end_matches('/')
        {
            errors.push(invalid(
                &field,
                discovery,
                "discoveryURL must be different from URL",
            ));
        }
        validate_url(discovery, &field, errors);
    }
    validate_audiences(issuer, &issuer_path, errors);
    let certificate_authority = if issuer.certificate_authority.is_empty() {
        CertificateAuthority::SystemRoots
    } else {
        if let Err(problem) = crate::ca::parse_pem(issuer.certificate_authority.as_bytes()) {
            errors.push(FieldError {
                field: format!("{issuer_path}.certificateAuthority"),
                kind: Kind::Invalid("\"<omitted>\"".into()),
                detail: problem,
            });
        }
        CertificateAuthority::Pem(issuer.certificate_authority.as_bytes().to_vec())
    };
    // Beta and on by default since 1.34. The operator accepts what kube-apiserver accepts and then
    // reaches the issuer directly: its own network position is the one that matters for it.
    if let Some(kind) = issuer
        .egress_selector_type
        .as_deref()
        .filter(|kind| !kind.is_empty() && !["controlplane", "cluster"].contains(kind))
    {
        errors.push(invalid(
            &format!("{issuer_path}.egressSelectorType"),
            kind,
            "egress selector must be either controlplane or cluster",
        ));
    }

    let mut state = EmailUse::default();
    let (required_claims, claim_rules) =
        validate_claim_rules(&jwt.claim_validation_rules, path, &mut state, errors);
    let mappings = &jwt.claim_mappings;
    let mapping_path = format!("{path}.claimMappings");
    let username = validate_prefixed(
        &mappings.username,
        &format!("{mapping_path}.username"),
        true,
        errors,
    );
    if let Some(Mapping::Expression(expression)) = &username {
        state.email |= expression.selects_claim("email");
        state.email_verified |= expression.selects_claim("email_verified");
    }
    let groups = validate_prefixed(
        &mappings.groups,
        &format!("{mapping_path}.groups"),
        false,
        errors,
    );
    let uid = match (&*mappings.uid.claim, &*mappings.uid.expression) {
        ("", "") => None,
        (claim, "") => Some(Mapping::Claim {
            claim: claim.to_owned(),
            prefix: String::new(),
        }),
        ("", expression) => compile(
            expression,
            Variable::Claims,
            &format!("{mapping_path}.uid.expression"),
            errors,
        )
        .map(Mapping::Expression),
        _ => {
            errors.push(invalid(
                &format!("{mapping_path}.uid"),
                "",
                "claim and expression can't both be set",
            ));
            None
        }
    };
    let extra = validate_extra(&mappings.extra, &mapping_path, &mut state, errors);
    if state.email && !state.email_verified {
        errors.push(invalid(
            &format!("{mapping_path}.username.expression"),
            &mappings.username.expression,
            "claims.email_verified must be used in claimMappings.username.expression or claimMappings.extra[*].valueExpression or claimValidationRules[*].expression when claims.email is used in claimMappings.username.expression",
        ));
    }
    let user_rules = validate_user_rules(&jwt.user_validation_rules, path, errors);

    (errors.len() == before).then(|| JwtAuthenticator {
        issuer: issuer.url.clone(),
        discovery_url,
        certificate_authority,
        audiences: issuer.audiences.clone(),
        required_claims,
        claim_rules,
        username: username.expect("validated: username is required"),
        groups,
        uid,
        extra,
        user_rules,
        algorithms: CONFIG_FILE_ALGORITHMS.to_vec(),
        verifies_es512: true,
        strictness,
    })
}

/// Whether `claims.email` and `claims.email_verified` are used, for kube-apiserver's rule that
/// an email username needs a look at `email_verified` somewhere.
#[derive(Default)]
struct EmailUse {
    email: bool,
    email_verified: bool,
}

fn validate_url(value: &str, field: &str, errors: &mut Vec<FieldError>) {
    let url = match url::Url::parse(value) {
        Ok(url) => url,
        Err(error) => {
            errors.push(invalid(field, value, &error.to_string()));
            return;
        }
    };
    if url.scheme() != "https" {
        errors.push(invalid(field, value, "URL scheme must be https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        errors.push(invalid(
            field,
            value,
            "URL must not contain a username or password",
        ));
    }
    if url.query().is_some_and(|query| !query.is_empty()) {
        errors.push(invalid(field, value, "URL must not contain a query"));
    }
    if url.fragment().is_some_and(|fragment| !fragment.is_empty()) {
        errors.push(invalid(field, value, "URL must not contain a fragment"));
    }
}

fn validate_audiences(issuer: &FileIssuer, issuer_path: &str, errors: &mut Vec<FieldError>) {
    let field = format!("{issuer_path}.audiences");
    let policy_field = format!("{issuer_path}.audienceMatchPolicy");
    if issuer.audiences.is_empty() {
        errors.push(required(
            &field,
            &format!("at least one {field} is required"),
        ));
        return;
    }
    let mut seen = HashSet::new();
    for (i, audience) in issuer.audiences.iter().enumerate() {
        let item = format!("{field}[{i}]");
        if audience.is_empty() {
            errors.push(required(&item, "audience can't be empty"));
        }
        if !seen.insert(audience.as_str()) {
            errors.push(duplicate(&item, audience));
        }
    }
    let policy = issuer.audience_match_policy.as_str();
    if issuer.audiences.len() > 1 && policy != "MatchAny" {
        errors.push(invalid(
            &policy_field,
            policy,
            "audienceMatchPolicy must be MatchAny for multiple audiences",
        ));
    }
    if issuer.audiences.len() == 1 && !policy.is_empty() && policy != "MatchAny" {
        errors.push(invalid(
            &policy_field,
            policy,
            "audienceMatchPolicy must be empty or MatchAny for single audience",
        ));
    }
}

type ClaimRules = (Vec<(String, String)>, Vec<Rule>);

fn validate_claim_rules(
    rules: &[FileClaimRule],
    path: &str,
    state: &mut EmailUse,
    errors: &mut Vec<FieldError>,
) -> ClaimRules {
    let mut required_claims = Vec::new();
    let mut compiled = Vec::new();
    let mut seen_claims = HashSet::new();
    let mut seen_expressions = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("{path}.claimValidationRules[{i}]");
        match (rule.claim.is_empty(), rule.expression.is_empty()) {
            (false, false) => errors.push(invalid(
                &field,
                &rule.claim,
                "claim and expression can't both be set",
            )),
            (true, true) => errors.push(required(&field, "claim or expression is required")),
            (false, true) => {
                if !rule.message.is_empty() {
                    errors.push(invalid(
                        &format!("{field}.message"),
                        &rule.message,
                        "may not be specified when claim is set",
                    ));
                }
                if !seen_claims.insert(rule.claim.as_str()) {
                    errors.push(duplicate(&format!("{field}.claim"), &rule.claim));
                }
                required_claims.push((rule.claim.clone(), rule.required_value.clone()));
            }
            (true, false) => {
                if !rule.required_value.is_empty() {
                    errors.push(invalid(
                        &format!("{field}.requiredValue"),
                        &rule.required_value,
                        "may not be specified when expression is set",
                    ));
                }
                if !seen_expressions.insert(rule.expression.as_str()) {
                    errors.push(duplicate(&format!("{field}.expression"), &rule.expression));
                    continue;
                }
                if let Some(expression) = compile(
                    &rule.expression,
                    Variable::Claims,
                    &format!("{field}.expression"),
                    errors,
                ) {
                    state.email_verified |= expression.selects_claim("email_verified");
                    compiled.push(Rule {
                        expression,
                        message: rule.message.clone(),
                    });
                }
            }
        }
    }
    (required_claims, compiled)
}

fn validate_prefixed(
    mapping: &FilePrefixed,
    field: &str,
    claim_or_expression_required: bool,
    errors: &mut Vec<FieldError>,
) -> Option<Mapping> {
    match (mapping.claim.is_empty(), mapping.expression.is_empty()) {
        (false, false) => {
            errors.push(invalid(field, "", "claim and expression can't both be set"));
            None
        }
        (true, true) => {
            if claim_or_expression_required {
                errors.push(required(field, "claim or expression is required"));
            }
            None
        }
        (true, false) => {
            if let Some(prefix) = &mapping.prefix {
                errors.push(invalid(
                    &format!("{field}.prefix"),
                    prefix,
                    "may not be specified when expression is set",
                ));
            }
            compile(
                &mapping.expression,
                Variable::Claims,
                &format!("{field}.expression"),
                errors,
            )
            .map(Mapping::Expression)
        }
        (false, true) => match &mapping.prefix {
            None => {
                errors.push(required(
                    &format!("{field}.prefix"),
                    "prefix is required when claim is set. It can be set to an empty string to disable prefixing",
                ));
                None
            }
            Some(prefix) => Some(Mapping::Claim {
                claim: mapping.claim.clone(),
                prefix: prefix.clone(),
            }),
        },
    }
}

fn validate_extra(
    extra: &[FileExtra],
    mapping_path: &str,
    state: &mut EmailUse,
    errors: &mut Vec<FieldError>,
) -> Vec<(String, Expression)> {
    let mut compiled = Vec::new();
    let mut seen = HashSet::new();
    for (i, mapping) in extra.iter().enumerate() {
        let field = format!("{mapping_path}.extra[{i}]");
        let key_field = format!("{field}.key");
        validate_domain_prefixed_path(&key_field, &mapping.key, errors);
        if mapping.key != mapping.key.to_lowercase() {
            errors.push(invalid(&key_field, &mapping.key, "must be lowercase"));
        }
        let domain = mapping
            .key
            .split_once('/')
            .map(|(domain, _)| domain)
            .unwrap_or("");
        if ["kubernetes.io", "k8s.io"]
            .iter()
            .any(|reserved| domain == *reserved || domain.ends_with(&format!(".{reserved}")))
        {
            errors.push(invalid(
                &key_field,
                &mapping.key,
                "k8s.io, kubernetes.io and their subdomains are reserved for Kubernetes use",
            ));
        }
        if !seen.insert(mapping.key.as_str()) {
            errors.push(duplicate(&key_field, &mapping.key));
            continue;
        }
        if mapping.value_expression.is_empty() {
            errors.push(required(
                &format!("{field}.valueExpression"),
                "valueExpression is required",
            ));
            continue;
        }
        if let Some(expression) = compile(
            &mapping.value_expression,
            Variable::Claims,
            &format!("{field}.valueExpression"),
            errors,
        ) {
            state.email_verified |= expression.selects_claim("email_verified");
            compiled.push((mapping.key.clone(), expression));
        }
    }
    compiled
}

/// `IsDomainPrefixedPath`: a DNS-1123 subdomain, a slash, and a non-empty path.
fn validate_domain_prefixed_path(field: &str, key: &str, errors: &mut Vec<FieldError>) {
    if key.is_empty() {
        errors.push(required(field, ""));
        return;
    }
    let Some((host, path)) = key
        .split_once('/')
        .filter(|(host, path)| !host.is_empty() && !path.is_empty())
    else {
        errors.push(invalid(
            field,
            key,
            "must be a domain-prefixed path (such as \"acme.io/foo\")",
        ));
        return;
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        errors.push(invalid(
            field,
            host,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ));
    }
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&b));
    if !path_ok {
        errors.push(invalid(
            field,
            path,
            "Invalid path (e.g. '/foo/bar', regex used for validation is '[A-Za-z0-9/\\-._~%!$&'()*+,;=:]+')",
        ));
    }
}

fn validate_user_rules(
    rules: &[FileUserRule],
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<Rule> {
    let mut compiled = Vec::new();
    let mut seen = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("{path}.userValidationRules[{i}].expression");
        if rule.expression.is_empty() {
            errors.push(required(&field, "expression is required"));
            continue;
        }
        if !seen.insert(rule.expression.as_str()) {
            errors.push(duplicate(&field, &rule.expression));
            continue;
        }
        if let Some(expression) = compile(&rule.expression, Variable::User, &field, errors) {
            compiled.push(Rule {
                expression,
                message: rule.message.clone(),
            });
        }
    }
    compiled
}

fn compile(
    source: &str,
    variable: Variable,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Expression> {
    match Expression::compile(source, variable) {
        Ok(expression) => Some(expression),
        Err(problem) => {
            errors.push(invalid(field, source, &problem));
            None
        }
    }
}
