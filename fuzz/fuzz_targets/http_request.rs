//! The HTTP routes (`server::router`: `/kube-config`, `/readyz`, `/healthz`, `/metrics`, the
//! access log), driven in-process with hostile requests, as a client on the network would send
//! them (minus what hyper refuses before routing: oversized heads, invalid header bytes).
//!
//! Input format (plain text, so seeds are readable and easy to write):
//! - byte 0, flags: bits 0-2 pick the method (GET, GET, HEAD, POST, PUT, DELETE, OPTIONS; 7 =
//!   the first word of line 1, any bytes the `http` crate accepts as a method); bit 3 says whether
//!   the controller's cache has synced (readiness).
//! - line 1 (up to `\n`): the request target, path and query, e.g. `/kube-config?namespace=a`
//!   (a `/` is prepended if missing; bytes `http::Uri` refuses are percent-encoded).
//! - every further line is a header: `name: value`, or, without a `:` in it, the whole line is
//!   an `Authorization` value (several such lines give several Authorization headers). Headers
//!   the `http` crate refuses are skipped.
//! - in header values, `@T` is replaced by a valid ID token signed with the issuer's key
//!   (generated at start-up, so no credential is checked in and the fuzzer reaches the 200
//!   path) and `@X` by an expired one (same key).
//!
//! `FUZZ_EXPLAIN=1 fuzz/target/x86_64-unknown-linux-gnu/release/http_request FILE...` prints
//! the status each input gets.
//!
//! Properties: no panic; never a 500 (503 is allowed: the issuer unreachable or not ready); a
//! 401 always carries `WWW-Authenticate`; the body never repeats an Authorization value of 16+
//! bytes (unless a reference request, identical but for Authorization values of the same shape
//! with other letters and digits, gives a body containing it too: then it is fixed text that the
//! fuzzer copied, not an echo); an
//! `Access-Control-Allow-Origin` header only ever names the one allowed origin
//! (`https://console.example.com`, configured for CORS), and only when the request's one `Origin`
//! header is exactly that.
#![no_main]

use std::sync::{Arc, LazyLock, atomic::AtomicBool};

use axum::body::Body;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::BodyExt as _;
use kubeconfig_operator::{
    config::KubeconfigSettings,
    metrics::Metrics,
    oidc::{authenticator::Authenticator, revocations::Revocations, verify::Verifier},
    server::{HttpState, router},
    testing,
};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tower::ServiceExt as _;

/// The one origin whose pages may call the download cross-origin.
const ALLOWED_ORIGIN: &str = "https://console.example.com";
const METHODS: [Method; 7] = [
    Method::GET,
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
];

struct Fixture {
    verifier: Arc<Verifier>,
    valid_token: String,
    expired_token: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let issuer = testing::issuer();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64| {
        json!({"iss": testing::ISSUER, "aud": testing::CLIENT_ID, "exp": exp, "iat": now - 60,
               "email": "jane@example.com", "email_verified": true, "groups": ["dev"]})
    };
    Fixture {
        verifier: Arc::new(issuer.verifier()),
        // Valid for 10 years: a fuzzing campaign never outlives it.
        valid_token: issuer.sign(&claims(now + 10 * 365 * 86_400)),
        expired_token: issuer.sign(&claims(now - 3600)),
    }
});

/// `FUZZ_EXPLAIN=1 ./http_request FILE...` prints each input's status, method and target.
static EXPLAIN: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_EXPLAIN").is_some());

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
});

fn state(controller_ready: bool) -> Arc<HttpState> {
    Arc::new(HttpState {
        authenticator: Arc::new(Authenticator::new(
            Arc::clone(&FIXTURE.verifier),
            Revocations::none(),
            Arc::new(Metrics::default()),
        )),
        settings: KubeconfigSettings {
            ca: kubeconfig_operator::ca::CaBundle::fixed(Some(
                b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".to_vec(),
            )),
            // Enabled, so `?format=exec` reaches the exec renderer too.
            exec: Some(kubeconfig_operator::config::ExecSettings {
                issuer: "https://127.0.0.1:5556/dex".into(),
                client_id: "kubelogin".into(),
                extra_scopes: vec!["groups".into()],
                issuer_ca_pem: None,
                command: kubeconfig_operator::config::ExecCommand::KubectlOidcLogin,
            }),
            ..KubeconfigSettings::for_tests("local cluster", "https://127.0.0.1:6443")
        },
        metrics: Arc::new(Metrics::default()),
        controller_ready: Arc::new(AtomicBool::new(controller_ready)),
        allowed_origins: vec![ALLOWED_ORIGIN.into()],
        confirmer: None,
        console: None,
        audit: Arc::default(),
    })
}

/// Percent-encodes what `http::Uri` would refuse, keeping the structure characters.
fn encode_target(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() * 3);
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"/?=&-._~%+!$'()*,;:@".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fn substitute(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value.get(i..i + 2) {
            Some(b"@T") => out.extend_from_slice(FIXTURE.valid_token.as_bytes()),
            Some(b"@X") => out.extend_from_slice(FIXTURE.expired_token.as_bytes()),
            _ => {
                out.push(value[i]);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out
}

struct Parsed {
    method: Method,
    uri: Uri,
    controller_ready: bool,
    /// Every header, Authorization ones included, in input order.
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn parse(data: &[u8]) -> Option<Parsed> {
    let (&flags, rest) = data.split_first()?;
    let mut lines = rest.split(|&b| b == b'\n');
    let mut target = lines.next().unwrap_or_default();
    let method = match usize::from(flags & 7) {
        7 => {
            let space = target
                .iter()
                .position(|&b| b == b' ')
                .unwrap_or(target.len());
            let method = Method::from_bytes(&target[..space]).ok()?;
            target = target.get(space + 1..).unwrap_or_default();
            method
        }
        i => METHODS[i].clone(),
    };
    let mut path = Vec::with_capacity(target.len() + 1);
    if target.first() != Some(&b'/') {
        path.push(b'/');
    }
    path.extend_from_slice(target);
    let uri = Uri::try_from(path.as_slice())
        .or_else(|_| Uri::try_from(encode_target(&path)))
        .ok()?;
    // The router sees origin-form targets only (hyper rejects the rest for HTTP/1.1 servers
    // unless it is a CONNECT or an absolute URI from a proxy client, both routed as paths).
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                let Ok(name) = HeaderName::from_bytes(&line[..colon]) else {
                    continue;
                };
                (name, value)
            }
            None => (header::AUTHORIZATION, line),
        };
        let Ok(value) = HeaderValue::from_bytes(&substitute(value)) else {
            continue;
        };
        headers.push((name, value));
    }
    Some(Parsed {
        method,
        uri,
        controller_ready: flags & 8 != 0,
        headers,
    })
}

struct Answer {
    status: StatusCode,
    www_authenticate: bool,
    allow_origin: Option<HeaderValue>,
    body: Vec<u8>,
}

/// The same value with every letter and digit moved on by one (z to a, 9 to 0), except in the
/// word `Bearer`: it takes the same path through the server (scheme, shape, length), so a body
/// that still holds the original value holds it as fixed text. A value with nothing to change
/// becomes a dummy token instead, so that an echo of it still shows.
fn same_shape(value: &HeaderValue) -> HeaderValue {
    let bytes = value.as_bytes();
    let mut shifted = bytes.to_vec();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at..].len() >= 6 && bytes[at..at + 6].eq_ignore_ascii_case(b"bearer") {
            at += 6;
            continue;
        }
        shifted[at] = match bytes[at] {
            b'z' => b'a',
            b'Z' => b'A',
            b'9' => b'0',
            byte if byte.is_ascii_alphanumeric() => byte + 1,
            byte => byte,
        };
        at += 1;
    }
    if shifted == bytes {
        return HeaderValue::from_static("Bearer dummy.dummy.dummy");
    }
    HeaderValue::from_bytes(&shifted).expect("letters and digits stay valid header bytes")
}

fn send(parsed: &Parsed, reshape_authorization: bool) -> Answer {
    let mut request = Request::builder()
        .method(parsed.method.clone())
        .uri(parsed.uri.clone());
    for (name, value) in &parsed.headers {
        if reshape_authorization && name == header::AUTHORIZATION {
            request = request.header(name, same_shape(value));
        } else {
            request = request.header(name, value);
        }
    }
    let request = request.body(Body::empty()).expect("parts were validated");
    RUNTIME.block_on(async {
        let response = router(state(parsed.controller_ready))
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let www_authenticate = response.headers().contains_key(header::WWW_AUTHENTICATE);
        let allow_origin = response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .cloned();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("bodies are in memory")
            .to_bytes()
            .to_vec();
        Answer {
            status,
            www_authenticate,
            allow_origin,
            body,
        }
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Some(parsed) = parse(data) else {
        return;
    };
    let answer = send(&parsed, false);
    if *EXPLAIN {
        eprintln!(
            "OUTCOME {} {} {}",
            answer.status.as_u16(),
            parsed.method,
            parsed.uri
        );
    }
    let shown = || {
        format!(
            "{} {} -> {}: {:?}",
            parsed.method,
            parsed.uri,
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )
    };
    assert_ne!(
        answer.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "500: {}",
        shown()
    );
    if answer.status == StatusCode::UNAUTHORIZED {
        assert!(
            answer.www_authenticate,
            "401 without WWW-Authenticate: {}",
            shown()
        );
    }
    if let Some(allowed) = &answer.allow_origin {
        let origins: Vec<&HeaderValue> = parsed
            .headers
            .iter()
            .filter(|(name, _)| name == header::ORIGIN)
            .map(|(_, value)| value)
            .collect();
        assert!(
            allowed == ALLOWED_ORIGIN && origins == [ALLOWED_ORIGIN],
            "Access-Control-Allow-Origin {allowed:?} for Origin {origins:?}: {}",
            shown()
        );
    }
    let echoed: Vec<&HeaderValue> = parsed
        .headers
        .iter()
        .filter(|(name, value)| {
            name == header::AUTHORIZATION
                && value.len() >= 16
                && contains(&answer.body, value.as_bytes())
        })
        .map(|(_, value)| value)
        .collect();
    if !echoed.is_empty() {
        // Fixed text the fuzzer copied into the header is not an echo.
        let reference = send(&parsed, true);
        for value in echoed {
            assert!(
                contains(&reference.body, value.as_bytes()),
                "the body repeats the Authorization value {value:?}: {}",
                shown()
            );
        }
    }
});
