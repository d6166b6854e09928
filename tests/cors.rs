//! CORS on the real operator binary, configured with `--allowed-origin`, trusting the real Dex:
//! a browser on the allowed origin gets its preflight for `GET /kube-config` with
//! `Authorization` answered and can read the download (and a refusal); any other origin, or a
//! preflight asking for more, gets no CORS header at all and never a 5xx.

mod support;

use reqwest::Method;
use support::{
    Namespace, cluster, id_token,
    operator::{Issuer, Operator},
    requests::{HttpResponse, http_request},
};

const CONSOLE: &str = "https://console.example.test";

/// The names of the answer's `Access-Control-*` headers.
fn cors_headers(response: &HttpResponse) -> Vec<&str> {
    response
        .headers
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

fn preflight(operator: &Operator, origin: &str, method: &str, headers: &str) -> HttpResponse {
    http_request(
        &operator.base_url,
        Method::OPTIONS,
        "/kube-config",
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", headers),
        ],
    )
}

#[test]
fn an_allowed_console_can_fetch_a_kubeconfig_and_no_other_origin_can() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "cors");
    let operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::Main,
        &[
            "--allowed-origin",
            "https://other.example.test",
            "--allowed-origin",
            CONSOLE,
        ],
    );

    let answer = preflight(&operator, CONSOLE, "GET", "authorization");
    assert_eq!(answer.status, 204, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), CONSOLE);
    assert_eq!(answer.header("access-control-allow-methods"), "GET");
    assert_eq!(
        answer.header("access-control-allow-headers"),
        "authorization"
    );
    assert!(answer.header("vary").contains("Origin"));

    let token = id_token(cluster, "alice");
    let authorization = format!("Bearer {token}");
    let download = http_request(
        &operator.base_url,
        Method::GET,
        "/kube-config",
        &[("origin", CONSOLE), ("authorization", &authorization)],
    );
    assert_eq!(download.status, 200, "{}", download.body);
    assert_eq!(download.header("access-control-allow-origin"), CONSOLE);
    assert_eq!(download.header("vary"), "Origin");
    assert!(
        download.body.contains(&token),
        "the kubeconfig holds the token"
    );

    let refused = http_request(
        &operator.base_url,
        Method::GET,
        "/kube-config",
        &[("origin", CONSOLE), ("authorization", "Bearer not-a-token")],
    );
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("access-control-allow-origin"), CONSOLE);
    assert!(refused.body.starts_with("Malformed: "), "{}", refused.body);

    for (case, answer) in [
        (
            "another origin",
            preflight(
                &operator,
                "https://evil.example.test",
                "GET",
                "authorization",
            ),
        ),
        (
            "another method",
            preflight(&operator, CONSOLE, "DELETE", "authorization"),
        ),
        (
            "another header",
            preflight(&operator, CONSOLE, "GET", "authorization, x-custom"),
        ),
    ] {
        assert_eq!(answer.status, 405, "{case}: {}", answer.body);
        assert_eq!(cors_headers(&answer), Vec::<&str>::new(), "{case}");
    }
    let foreign = http_request(
        &operator.base_url,
        Method::GET,
        "/kube-config",
        &[
            ("origin", "https://evil.example.test"),
            ("authorization", &authorization),
        ],
    );
    assert_eq!(foreign.status, 200);
    assert_eq!(cors_headers(&foreign), Vec::<&str>::new());
    assert_eq!(foreign.header("vary"), "Origin");

    let probe = http_request(
        &operator.base_url,
        Method::GET,
        "/healthz",
        &[("origin", CONSOLE)],
    );
    assert_eq!(probe.status, 200);
    assert_eq!(
        cors_headers(&probe),
        Vec::<&str>::new(),
        "only the download is shared cross-origin"
    );
    assert!(
        !operator.logs().contains(&token),
        "the operator logged the token"
    );
}
