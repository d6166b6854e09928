//! The listener's limits, on the real operator binary over real TCP: oversized headers get 431,
//! clients that never finish their headers are dropped, connections beyond the limit wait, and a
//! client over its request budget gets 429 while health probes still answer.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::Duration,
};

use support::{
    Namespace, cluster,
    operator::{Issuer, Operator},
    requests::http_get,
};

fn address(operator: &Operator) -> String {
    operator.base_url.trim_start_matches("http://").to_owned()
}

/// Sends raw bytes and returns the status code of the answer, if one comes.
fn raw_status(address: &str, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(address).expect("connect to the operator");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn headers_over_16_kib_get_431_and_the_server_keeps_serving() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "limits-431");
    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let padding = "a".repeat(20 * 1024);
    let request = format!(
        "GET /kube-config HTTP/1.1\r\nHost: x\r\nX-Padding: {padding}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        raw_status(&address(&operator), request.as_bytes()),
        Some(431)
    );
    let small = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&address(&operator), small.as_bytes()), Some(200));
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "limits-slow");
    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &[]);
    let mut stream = TcpStream::connect(address(&operator)).unwrap();
    stream
        .write_all(b"GET /kube-config HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // The server's header read timeout is 10 s; the bound here only keeps a broken server from
    // hanging the test.
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let mut buffer = [0u8; 512];
    match stream.read(&mut buffer) {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        Err(error) => panic!("the server kept a half-sent request open: {error}"),
    }
}

#[test]
fn connections_beyond_the_limit_wait_until_one_frees() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "limits-conns");
    let operator = Operator::start(cluster, &ns.name, Issuer::Main, &["--max-connections", "2"]);
    let address = address(&operator);
    // Operator::start's readiness probe has closed its connection; fill both slots.
    let first = TcpStream::connect(&address).unwrap();
    let second = TcpStream::connect(&address).unwrap();
    let mut third = TcpStream::connect(&address).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buffer = [0u8; 256];
    let early = third.read(&mut buffer);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "a third connection was served while two were held: {early:?}"
    );
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "the waiting connection is served once a slot frees"
    );
    drop(second);
}

#[test]
fn a_client_over_its_budget_gets_429_and_probes_still_answer() {
    let cluster = cluster();
    let ns = Namespace::new(cluster, "limits-rate");
    let operator = Operator::start(
        cluster,
        &ns.name,
        Issuer::Main,
        &["--requests-per-minute-per-client", "5"],
    );
    let statuses: Vec<u16> = (0..8)
        .map(|_| http_get(&operator.base_url, "/kube-config", Some("not-a-token"), "").status)
        .collect();
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(
        statuses[5..].iter().all(|status| *status == 429),
        "{statuses:?}"
    );
    let limited = http_get(&operator.base_url, "/kube-config", None, "");
    assert_eq!(limited.status, 429);
    assert!(!limited.header("retry-after").is_empty());
    assert_eq!(
        http_get(&operator.base_url, "/healthz", None, "").status,
        200
    );
    let metrics = operator.metrics();
    assert!(
        metrics.contains(
            r#"kubeconfig_operator_http_requests_total{route="/kube-config",code="429"}"#
        ),
        "{metrics}"
    );
}
