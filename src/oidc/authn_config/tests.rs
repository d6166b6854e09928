//! Every validation error of kube-apiserver 1.37's `validateJWTAuthenticator`, with its message as
//! the reference (`k8s.io/apiserver/pkg/apis/apiserver/validation/validation_test.go`).

use super::*;

const HEAD: &str =
    "apiVersion: apiserver.config.k8s.io/v1beta1\nkind: AuthenticationConfiguration\n";

/// A file with one issuer; `issuer` and `rest` are YAML blocks indented for `jwt[0]`.
fn one(issuer: &str, rest: &str) -> String {
    format!("{HEAD}jwt:\n- issuer:\n{issuer}{rest}")
}

const GOOD_ISSUER: &str = "    url: https://dex.example/dex\n    audiences: [a]\n";
const GOOD_MAPPINGS: &str = "  claimMappings:\n    username: {claim: sub, prefix: ''}\n";

fn error_of(yaml: &str) -> String {
    parse(yaml.as_bytes(), Strictness::default()).unwrap_err()
}

#[test]
fn a_complete_file_is_accepted_in_both_versions() {
    for version in ["v1", "v1beta1"] {
        let yaml = [
            &format!("apiVersion: apiserver.config.k8s.io/{version}"),
            "kind: AuthenticationConfiguration",
            "jwt:",
            "- issuer:",
            "    url: https://dex.example/dex",
            "    audiences: [a, b]",
            "    audienceMatchPolicy: MatchAny",
            "  claimValidationRules:",
            "  - {claim: hd, requiredValue: example.com}",
            "  - {expression: 'claims.email_verified == true', message: verified only}",
            "  claimMappings:",
            "    username: {expression: \"'dex:' + claims.email\"}",
            "    groups: {claim: groups, prefix: 'dex:'}",
            "    uid: {claim: sub}",
            "    extra:",
            "    - {key: example.com/name, valueExpression: claims.name}",
            "  userValidationRules:",
            "  - {expression: \"!user.username.startsWith('system:')\", message: no system users}",
        ]
        .join("\n");
        let loaded = parse(yaml.as_bytes(), Strictness::default()).unwrap();
        let jwt = &loaded.authenticators[0];
        assert_eq!(jwt.audiences, ["a", "b"]);
        assert_eq!(
            jwt.required_claims,
            [("hd".to_owned(), "example.com".to_owned())]
        );
        assert_eq!(jwt.claim_rules.len(), 1);
        assert_eq!(jwt.extra.len(), 1);
        assert_eq!(jwt.user_rules.len(), 1);
        assert!(loaded.digest.starts_with("sha256:") && loaded.digest.len() == 7 + 64);
    }
}

#[test]
fn the_digest_is_kube_apiservers() {
    // `fmt.Sprintf("sha256:%x", sha256.Sum256(data))`, here of the empty file.
    assert_eq!(
        digest(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn every_validation_error_reads_like_kube_apiservers() {
    let cases: Vec<(String, &str)> = vec![
        (
            one("    audiences: [a]\n", GOOD_MAPPINGS),
            "jwt[0].issuer.url: Required value: URL is required",
        ),
        (
            one(
                "    url: http://dex.example\n    audiences: [a]\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.url: Invalid value: \"http://dex.example\": URL scheme must be https",
        ),
        (
            one(
                "    url: https://u:p@dex.example\n    audiences: [a]\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.url: Invalid value: \"https://u:p@dex.example\": URL must not contain a username or password",
        ),
        (
            one(
                "    url: https://dex.example?x=1\n    audiences: [a]\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.url: Invalid value: \"https://dex.example?x=1\": URL must not contain a query",
        ),
        (
            one(
                "    url: https://dex.example#f\n    audiences: [a]\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.url: Invalid value: \"https://dex.example#f\": URL must not contain a fragment",
        ),
        (
            one(
                "    url: https://dex.example\n    discoveryURL: https://dex.example/\n    audiences: [a]\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.discoveryURL: Invalid value: \"https://dex.example/\": discoveryURL must be different from URL",
        ),
        (
            one(
                "    url: https://dex.example\n    discoveryURL: http://internal.example/.well-known/openid-configuration\n    audiences: [a]\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.discoveryURL: Invalid value: \"http://internal.example/.well-known/openid-configuration\": URL scheme must be https",
        ),
        (
            one("    url: https://dex.example\n", GOOD_MAPPINGS),
            "jwt[0].issuer.audiences: Required value: at least one jwt[0].issuer.audiences is required",
        ),
        (
            one(
                "    url: https://dex.example\n    audiences: ['']\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.audiences[0]: Required value: audience can't be empty",
        ),
        (
            one(
                "    url: https://dex.example\n    audiences: [a, a]\n    audienceMatchPolicy: MatchAny\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.audiences[1]: Duplicate value: \"a\"",
        ),
        (
            one(
                "    url: https://dex.example\n    audiences: [a, b]\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.audienceMatchPolicy: Invalid value: \"\": audienceMatchPolicy must be MatchAny for multiple audiences",
        ),
        (
            one(
                "    url: https://dex.example\n    audiences: [a]\n    audienceMatchPolicy: MatchAll\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.audienceMatchPolicy: Invalid value: \"MatchAll\": audienceMatchPolicy must be empty or MatchAny for single audience",
        ),
        (
            one(
                "    url: https://dex.example\n    audiences: [a]\n    certificateAuthority: not-pem\n",
                GOOD_MAPPINGS,
            ),
            "jwt[0].issuer.certificateAuthority: Invalid value: \"<omitted>\"",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimValidationRules:\n  - {claim: a, expression: 'true'}\n  claimMappings:\n    username: {claim: sub, prefix: ''}\n",
            ),
            "jwt[0].claimValidationRules[0]: Invalid value: \"a\": claim and expression can't both be set",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimValidationRules:\n  - {message: m}\n  claimMappings:\n    username: {claim: sub, prefix: ''}\n",
            ),
            "jwt[0].claimValidationRules[0]: Required value: claim or expression is required",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimValidationRules:\n  - {claim: a, message: m}\n  claimMappings:\n    username: {claim: sub, prefix: ''}\n",
            ),
            "jwt[0].claimValidationRules[0].message: Invalid value: \"m\": may not be specified when claim is set",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimValidationRules:\n  - {claim: a}\n  - {claim: a}\n  claimMappings:\n    username: {claim: sub, prefix: ''}\n",
            ),
            "jwt[0].claimValidationRules[1].claim: Duplicate value: \"a\"",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimValidationRules:\n  - {expression: 'true', requiredValue: x}\n  claimMappings:\n    username: {claim: sub, prefix: ''}\n",
            ),
            "jwt[0].claimValidationRules[0].requiredValue: Invalid value: \"x\": may not be specified when expression is set",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimValidationRules:\n  - {expression: 'true'}\n  - {expression: 'true'}\n  claimMappings:\n    username: {claim: sub, prefix: ''}\n",
            ),
            "jwt[0].claimValidationRules[1].expression: Duplicate value: \"true\"",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimValidationRules:\n  - {expression: 'claims.x +'}\n  claimMappings:\n    username: {claim: sub, prefix: ''}\n",
            ),
            "jwt[0].claimValidationRules[0].expression: Invalid value: \"claims.x +\": compilation failed",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, expression: claims.sub}\n",
            ),
            "jwt[0].claimMappings.username: Invalid value: \"\": claim and expression can't both be set",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    groups: {claim: g, prefix: ''}\n",
            ),
            "jwt[0].claimMappings.username: Required value: claim or expression is required",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {expression: claims.sub, prefix: x}\n",
            ),
            "jwt[0].claimMappings.username.prefix: Invalid value: \"x\": may not be specified when expression is set",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub}\n",
            ),
            "jwt[0].claimMappings.username.prefix: Required value: prefix is required when claim is set. It can be set to an empty string to disable prefixing",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n    groups: {claim: g}\n",
            ),
            "jwt[0].claimMappings.groups.prefix: Required value: prefix is required when claim is set",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n    uid: {claim: sub, expression: claims.sub}\n",
            ),
            "jwt[0].claimMappings.uid: Invalid value: \"\": claim and expression can't both be set",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n    uid: {expression: 'claims.sub.nope()'}\n",
            ),
            "jwt[0].claimMappings.uid.expression: Invalid value: \"claims.sub.nope()\": compilation failed",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n    extra:\n    - {key: '', valueExpression: claims.sub}\n",
            ),
            "jwt[0].claimMappings.extra[0].key: Required value",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n    extra:\n    - {key: foo, valueExpression: claims.sub}\n",
            ),
            "jwt[0].claimMappings.extra[0].key: Invalid value: \"foo\": must be a domain-prefixed path (such as \"acme.io/foo\")",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n    extra:\n    - {key: example.com/Foo, valueExpression: claims.sub}\n",
            ),
            "jwt[0].claimMappings.extra[0].key: Invalid value: \"example.com/Foo\": must be lowercase",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n    extra:\n    - {key: sub.k8s.io/foo, valueExpression: claims.sub}\n",
            ),
            "jwt[0].claimMappings.extra[0].key: Invalid value: \"sub.k8s.io/foo\": k8s.io, kubernetes.io and their subdomains are reserved for Kubernetes use",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n    extra:\n    - {key: example.com/a, valueExpression: claims.sub}\n    - {key: example.com/a, valueExpression: claims.sub}\n",
            ),
            "jwt[0].claimMappings.extra[1].key: Duplicate value: \"example.com/a\"",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n    extra:\n    - {key: example.com/a}\n",
            ),
            "jwt[0].claimMappings.extra[0].valueExpression: Required value: valueExpression is required",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {expression: claims.email}\n",
            ),
            "jwt[0].claimMappings.username.expression: Invalid value: \"claims.email\": claims.email_verified must be used in claimMappings.username.expression or claimMappings.extra[*].valueExpression or claimValidationRules[*].expression when claims.email is used in claimMappings.username.expression",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n  userValidationRules:\n  - {message: m}\n",
            ),
            "jwt[0].userValidationRules[0].expression: Required value: expression is required",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n  userValidationRules:\n  - {expression: 'true'}\n  - {expression: 'true'}\n",
            ),
            "jwt[0].userValidationRules[1].expression: Duplicate value: \"true\"",
        ),
        (
            one(
                GOOD_ISSUER,
                "  claimMappings:\n    username: {claim: sub, prefix: ''}\n  userValidationRules:\n  - {expression: claims.sub == ''}\n",
            ),
            "jwt[0].userValidationRules[0].expression: Invalid value: \"claims.sub == ''\": compilation failed: undeclared reference to 'claims'",
        ),
        (
            format!(
                "{HEAD}jwt:\n- issuer:\n{GOOD_ISSUER}{GOOD_MAPPINGS}- issuer:\n{GOOD_ISSUER}{GOOD_MAPPINGS}"
            ),
            "jwt[1].issuer.url: Duplicate value: \"https://dex.example/dex\"",
        ),
        (
            format!(
                "{HEAD}jwt:\n- issuer:\n    url: https://a.example\n    discoveryURL: https://d.example/x\n    audiences: [a]\n{GOOD_MAPPINGS}- issuer:\n    url: https://b.example\n    discoveryURL: https://d.example/x\n    audiences: [a]\n{GOOD_MAPPINGS}"
            ),
            "jwt[1].issuer.discoveryURL: Duplicate value: \"https://d.example/x\"",
        ),
        (
            format!("{HEAD}anonymous:\n  enabled: false\n  conditions: [{{path: /livez}}]\n"),
            "anonymous.conditions: Invalid value: <conditions>: enabled should be set to true when conditions are defined",
        ),
    ];
    for (yaml, expected) in &cases {
        let error = error_of(yaml);
        assert!(
            error.contains(expected),
            "expected {expected:?}, got {error:?} for\n{yaml}"
        );
    }
}

#[test]
fn more_than_64_issuers_are_too_many() {
    let mut yaml = format!("{HEAD}jwt:\n");
    for i in 0..65 {
        yaml.push_str(&format!(
            "- issuer: {{url: 'https://i{i}.example', audiences: [a]}}\n{GOOD_MAPPINGS}"
        ));
    }
    assert_eq!(
        error_of(&yaml),
        "jwt: Too many: 65: must have at most 64 items"
    );
}

#[test]
fn other_kinds_unknown_fields_and_an_unknown_egress_selector_are_refused() {
    assert!(
        error_of(
            "apiVersion: apiserver.config.k8s.io/v1alpha2\nkind: AuthenticationConfiguration\n"
        )
        .contains("apiVersion/kind")
    );
    assert!(
        error_of(&one(GOOD_ISSUER, "  claimMapping: {}\n"))
            .contains("unknown field `claimMapping`")
    );
    assert!(error_of(&one("    url: https://dex.example\n    audiences: [a]\n    egressSelectorType: internet\n", GOOD_MAPPINGS)).contains("jwt[0].issuer.egressSelectorType: Invalid value: \"internet\": egress selector must be either controlplane or cluster"));
}

/// kube-apiserver 1.34+ accepts both egress selectors (beta, on by default); so does the operator.
#[test]
fn both_egress_selectors_are_accepted() {
    for kind in ["controlplane", "cluster"] {
        let yaml = one(
            &format!(
                "    url: https://dex.example\n    audiences: [a]\n    egressSelectorType: {kind}\n"
            ),
            GOOD_MAPPINGS,
        );
        assert!(
            parse(yaml.as_bytes(), Strictness::default()).is_ok(),
            "{kind}"
        );
    }
}

#[test]
fn several_errors_are_reported_on_one_line() {
    let error = error_of(&one("    url: http://dex.example\n", ""));
    assert!(error.starts_with('[') && !error.contains('\n'), "{error}");
    assert!(error.contains("jwt[0].issuer.url") && error.contains("jwt[0].issuer.audiences"));
}
