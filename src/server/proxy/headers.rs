//! What the proxy does to a request's headers, in the order it does it: refuse a client's own
//! impersonation, drop hop-by-hop headers (and every header `Connection` names), put in the
//! proxy's credential, and impersonate the verified user. Pure functions over a `HeaderMap`, so
//! each rule is tested here without a network.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::oidc::token::Identity;

/// The group kube-apiserver gives every authenticated user; impersonation does not add it by
/// itself when groups are named, so the proxy names it.
pub(super) const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// Headers that describe one connection, not the request (RFC 9110 7.6.1, plus the legacy
/// `Proxy-Connection` and `Keep-Alive`). `Upgrade` is among them: an upgrade is forwarded by
/// `upgrade`, which sets its own.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The first header by which the client tries to impersonate someone itself: any name that
/// starts with `impersonate-` in any case, also written with `_` for `-` (which some servers
/// and proxies treat as the same header). Such a request is refused, not cleaned: a client that
/// sends them is either confused or attacking, and either way must not get an answer that looks
/// like it worked.
pub(super) fn client_impersonation(headers: &HeaderMap) -> Option<&HeaderName> {
    const PREFIX: &[u8] = b"impersonate-";
    headers.keys().find(|name| {
        // hyper gives names in lower case already; the comparison does not rely on it.
        let name = name.as_str().as_bytes();
        name.len() >= PREFIX.len()
            && name.iter().zip(PREFIX).all(|(byte, expected)| {
                let byte = if *byte == b'_' {
                    b'-'
                } else {
                    byte.to_ascii_lowercase()
                };
                byte == *expected
            })
    })
}

/// Whether the client asks to upgrade the connection (`Connection: upgrade` and an `Upgrade`
/// header), and to what. Read before [`strip_hop_by_hop`] removes both.
pub(super) fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    connection_tokens(headers)
        .any(|token| token.eq_ignore_ascii_case("upgrade"))
        .then(|| upgrade.clone())
}

/// Removes the hop-by-hop headers and every header the `Connection` header names, so that a
/// client cannot make the proxy drop a header it adds later by naming it (the order in
/// `forward` also guarantees that), nor pass connection options on to the API server.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty())
}

/// kube-apiserver also reads a bearer token from a WebSocket subprotocol of this prefix (for
/// browsers, which cannot set `Authorization` on a WebSocket).
const SUBPROTOCOL_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Go's `base64.RawURLEncoding`, which kube-apiserver decodes the subprotocol token with: no
/// padding, and bits after the last full byte ignored rather than refused.
const RAW_URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// Why a bearer token among the WebSocket subprotocols cannot be used; kube-apiserver refuses
/// the same requests (its `websocket.ProtocolAuthenticator`), with 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum SubprotocolTokenError {
    #[error("more than one base64url.bearer.authorization.k8s.io subprotocol was sent; send one")]
    Several,
    #[error(
        "the base64url.bearer.authorization.k8s.io subprotocol does not hold a base64url token (unpadded) that is UTF-8"
    )]
    Encoding,
    #[error(
        "a base64url.bearer.authorization.k8s.io subprotocol needs another subprotocol beside it, for the server to answer with"
    )]
    NoOtherProtocol,
}

/// The `Authorization` value for the bearer token a WebSocket upgrade carries among its
/// subprotocols, read as kube-apiserver reads it: every `Sec-WebSocket-Protocol` header, values
/// split at commas and trimmed; one token protocol at most, base64url without padding, UTF-8,
/// and another protocol beside it. `Ok(None)` when there is none (or it decodes to nothing).
/// The protocol itself is removed later, with the client's other credentials
/// ([`set_credential`]).
pub(super) fn subprotocol_bearer(
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, SubprotocolTokenError> {
    let mut token = None;
    let mut others = 0;
    for protocol in websocket_protocols(headers) {
        let Some(encoded) = protocol.strip_prefix(SUBPROTOCOL_BEARER_PREFIX) else {
            others += 1;
            continue;
        };
        if token.is_some() {
            return Err(SubprotocolTokenError::Several);
        }
        let decoded = base64::Engine::decode(&RAW_URL, encoded)
            .map_err(|_| SubprotocolTokenError::Encoding)?;
        token = Some(String::from_utf8(decoded).map_err(|_| SubprotocolTokenError::Encoding)?);
    }
    let Some(token) = token.filter(|token| !token.is_empty()) else {
        return Ok(None);
    };
    if others == 0 {
        return Err(SubprotocolTokenError::NoOtherProtocol);
    }
    // A token no header can carry is no token the API server could verify either.
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map(Some)
        .map_err(|_| SubprotocolTokenError::Encoding)
}

/// The subprotocols of every `Sec-WebSocket-Protocol` header, in order (RFC 6455 11.3.4: several
/// headers are one list).
fn websocket_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
}

/// Says who the client is, for the API server's audit log (`sourceIPs` reads `X-Forwarded-For`,
/// then `X-Real-Ip`): the address the connection came from, replacing whatever the client
/// claimed, since the proxy is where requests enter.
pub(super) fn set_forwarded_for(headers: &mut HeaderMap, client: Option<IpAddr>) {
    headers.remove("x-forwarded-for");
    headers.remove("x-real-ip");
    if let Some(client) = client {
        // An address always makes a valid header value.
        if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
            headers.insert("x-forwarded-for", value);
        }
    }
}

/// Replaces every `Authorization` header with the proxy's own credential, and removes any bearer
/// token the client put among its WebSocket subprotocols: no credential of the client's travels
/// on, so the API server has no second identity to fall back to.
pub(super) fn set_credential(headers: &mut HeaderMap, credential: HeaderValue) {
    headers.remove(header::AUTHORIZATION);
    headers.insert(header::AUTHORIZATION, credential);
    let protocols: Vec<String> = websocket_protocols(headers)
        .filter(|protocol| !protocol.starts_with(SUBPROTOCOL_BEARER_PREFIX))
        .map(str::to_owned)
        .collect();
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if protocols.is_empty() {
        return;
    }
    // Each part came out of a valid header value, so the joined one is valid too.
    if let Ok(value) = HeaderValue::from_str(&protocols.join(", ")) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
}

/// A name kube-apiserver would not receive as sent: HTTP header values cannot carry control
/// characters, so such a user cannot be impersonated faithfully and is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the {what} contains characters an HTTP header cannot carry, so the proxy cannot act for it"
)]
pub(super) struct Unrepresentable {
    pub what: &'static str,
}

/// What an `Impersonate-Extra-` header name cannot carry as it is: every byte that is not an
/// RFC 9110 token character, and `%` itself. client-go escapes the same set (its
/// `headerKeyEscape`) and kube-apiserver unescapes the name with `url.PathUnescape`, so
/// `authentication.kubernetes.io/credential-id` travels as `...kubernetes.io%2Fcredential-id`.
const EXTRA_KEY_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'%')
    .add(b'(')
    .add(b')')
    .add(b',')
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'{')
    .add(b'}');

/// The header that impersonates the extra field `key`.
fn extra_header(key: &str) -> Result<HeaderName, Unrepresentable> {
    let name = format!(
        "impersonate-extra-{}",
        utf8_percent_encode(key, EXTRA_KEY_ESCAPES)
    );
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| Unrepresentable {
        what: "an extra field's key",
    })
}

/// Adds `Impersonate-User`, one `Impersonate-Group` per group, then `system:authenticated`
/// (once), `Impersonate-Uid` when the identity has a UID, and one `Impersonate-Extra-<key>` per
/// value of each extra field (the `credential-id` from `jti` among them), so the API server's
/// authorization, admission and audit see the whole identity the token maps, as they would with
/// the token itself. The proxy's ServiceAccount needs the right to impersonate each: `uids`, and
/// `userextras/<key>` for each key (config/proxy).
pub(super) fn impersonate(
    headers: &mut HeaderMap,
    identity: &Identity,
) -> Result<(), Unrepresentable> {
    let value = |text: &str, what| {
        HeaderValue::from_bytes(text.as_bytes()).map_err(|_| Unrepresentable { what })
    };
    headers.insert("impersonate-user", value(&identity.username, "username")?);
    for group in &identity.groups {
        headers.append("impersonate-group", value(group, "a group name")?);
    }
    if !identity
        .groups
        .iter()
        .any(|group| group == AUTHENTICATED_GROUP)
    {
        headers.append(
            "impersonate-group",
            HeaderValue::from_static(AUTHENTICATED_GROUP),
        );
    }
    if !identity.uid.is_empty() {
        headers.insert("impersonate-uid", value(&identity.uid, "UID")?);
    }
    for (key, values) in &identity.extra {
        let name = extra_header(key)?;
        for extra in values {
            headers.append(name.clone(), value(extra, "an extra field's value")?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn alice() -> Identity {
        Identity {
            username: "alice@example.com".into(),
            groups: vec!["team-a".into()],
            expires_at: Utc::now(),
            issued_at: None,
            uid: String::new(),
            extra: Default::default(),
        }
    }

    #[test]
    fn every_spelling_of_an_impersonation_header_is_found() {
        for name in [
            "Impersonate-User",
            "impersonate-user",
            "IMPERSONATE-GROUP",
            "ImPeRsOnAtE-gRoUp",
            "Impersonate-Uid",
            "Impersonate-Extra-scopes",
            "impersonate-extra-foo%2fbar",
            "Impersonate_User",
            "impersonate_extra_x",
        ] {
            let map = headers(&[("accept", "*/*"), (name, "admin")]);
            assert!(client_impersonation(&map).is_some(), "{name}");
        }
        for name in ["impersonate", "x-impersonate-user", "impersonatex-user"] {
            let map = headers(&[(name, "admin")]);
            assert_eq!(client_impersonation(&map), None, "{name}");
        }
    }

    #[test]
    fn headers_named_in_connection_and_hop_by_hop_headers_are_dropped() {
        let mut map = headers(&[
            ("connection", "Impersonate-User, X-Custom"),
            ("connection", "keep-alive"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("accept", "application/json"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        let map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(requested_upgrade(&map).unwrap(), "websocket");
        assert_eq!(
            requested_upgrade(&headers(&[("upgrade", "websocket")])),
            None
        );
        assert_eq!(
            requested_upgrade(&headers(&[("connection", "upgrade")])),
            None
        );
    }

    #[test]
    fn the_credential_replaces_every_authorization_header() {
        let mut map = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        set_credential(&mut map, HeaderValue::from_static("Bearer proxy"));
        let values: Vec<_> = map.get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(values, ["Bearer proxy"]);
    }

    #[test]
    fn the_forwarded_for_address_is_the_connections_not_the_clients_claim() {
        let mut map = headers(&[
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-for", "10.8.8.8"),
            ("x-real-ip", "10.7.7.7"),
        ]);
        set_forwarded_for(&mut map, Some("192.0.2.1".parse().unwrap()));
        let forwarded: Vec<_> = map.get_all("x-forwarded-for").iter().collect();
        assert_eq!(forwarded, ["192.0.2.1"]);
        assert!(!map.contains_key("x-real-ip"));
    }

    #[test]
    fn bearer_tokens_among_websocket_subprotocols_are_removed() {
        let mut map = headers(&[
            (
                "sec-websocket-protocol",
                "base64url.bearer.authorization.k8s.io.YWRtaW4, v5.channel.k8s.io",
            ),
            ("sec-websocket-protocol", "v4.channel.k8s.io"),
        ]);
        set_credential(&mut map, HeaderValue::from_static("Bearer proxy"));
        let protocols: Vec<_> = map.get_all("sec-websocket-protocol").iter().collect();
        assert_eq!(protocols, ["v5.channel.k8s.io, v4.channel.k8s.io"]);

        let mut map = headers(&[(
            "sec-websocket-protocol",
            "base64url.bearer.authorization.k8s.io.YWRtaW4",
        )]);
        set_credential(&mut map, HeaderValue::from_static("Bearer proxy"));
        assert!(!map.contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn a_subprotocol_bearer_token_is_read_as_kube_apiserver_reads_it() {
        let bearer = |protocols: &[&str]| {
            let pairs: Vec<_> = protocols
                .iter()
                .map(|value| ("sec-websocket-protocol", *value))
                .collect();
            subprotocol_bearer(&headers(&pairs))
        };
        // "YWxpY2U" is "alice" unpadded; "YWxpY2V" has trailing bits set, which Go ignores.
        for sent in [
            &["base64url.bearer.authorization.k8s.io.YWxpY2U, v4.channel.k8s.io"][..],
            &[
                "v4.channel.k8s.io",
                "base64url.bearer.authorization.k8s.io.YWxpY2U",
            ],
            &[" base64url.bearer.authorization.k8s.io.YWxpY2V ,x"],
        ] {
            assert_eq!(bearer(sent).unwrap().unwrap(), "Bearer alice", "{sent:?}");
        }
        assert_eq!(bearer(&["v4.channel.k8s.io"]), Ok(None));
        assert_eq!(
            bearer(&["base64url.bearer.authorization.k8s.io., v4.channel.k8s.io"]),
            Ok(None)
        );
        assert_eq!(
            bearer(&["base64url.bearer.authorization.k8s.io.YWxpY2U"]),
            Err(SubprotocolTokenError::NoOtherProtocol)
        );
        assert_eq!(
            bearer(&[
                "base64url.bearer.authorization.k8s.io.YWxpY2U, x",
                "base64url.bearer.authorization.k8s.io.Ym9i"
            ]),
            Err(SubprotocolTokenError::Several)
        );
        for encoding in ["YWxpY2U=", "YWxp+2U", "_w", "AA"] {
            assert_eq!(
                bearer(&[&format!(
                    "base64url.bearer.authorization.k8s.io.{encoding}, x"
                )]),
                Err(SubprotocolTokenError::Encoding),
                "{encoding}"
            );
        }
    }

    #[test]
    fn the_user_and_every_group_plus_authenticated_are_impersonated() {
        let mut map = HeaderMap::new();
        impersonate(&mut map, &alice()).unwrap();
        assert_eq!(map["impersonate-user"], "alice@example.com");
        let groups: Vec<_> = map.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, ["team-a", "system:authenticated"]);
        assert!(!map.contains_key("impersonate-uid"), "no UID, no header");

        let mut already = alice();
        already.groups.push(AUTHENTICATED_GROUP.into());
        let mut map = HeaderMap::new();
        impersonate(&mut map, &already).unwrap();
        assert_eq!(map.get_all("impersonate-group").iter().count(), 2);
    }

    #[test]
    fn the_uid_and_every_extra_are_impersonated_with_keys_escaped_as_client_go_does() {
        let mut identity = alice();
        identity.uid = "uid-1234".into();
        identity.extra = [
            (
                "authentication.kubernetes.io/credential-id".to_owned(),
                vec!["JTI=abc".to_owned()],
            ),
            (
                "example.com/roles".to_owned(),
                vec!["admin".to_owned(), "dev ops".to_owned()],
            ),
            ("odd key%:x".to_owned(), vec!["v".to_owned()]),
        ]
        .into();
        let mut map = HeaderMap::new();
        impersonate(&mut map, &identity).unwrap();
        assert_eq!(map["impersonate-uid"], "uid-1234");
        assert_eq!(
            map["impersonate-extra-authentication.kubernetes.io%2fcredential-id"],
            "JTI=abc"
        );
        let roles: Vec<_> = map
            .get_all("impersonate-extra-example.com%2froles")
            .iter()
            .collect();
        assert_eq!(roles, ["admin", "dev ops"]);
        assert_eq!(map["impersonate-extra-odd%20key%25%3ax"], "v");
        assert_eq!(map.keys_len(), 6);

        let mut evil = alice();
        evil.extra = [(
            "k".to_owned(),
            vec!["a\r\nImpersonate-User: admin".to_owned()],
        )]
        .into();
        assert_eq!(
            impersonate(&mut HeaderMap::new(), &evil),
            Err(Unrepresentable {
                what: "an extra field's value"
            })
        );
    }

    #[test]
    fn a_name_with_control_characters_is_refused() {
        let mut evil = alice();
        evil.groups
            .push("team-b\r\nImpersonate-Group: system:masters".into());
        let mut map = HeaderMap::new();
        assert_eq!(
            impersonate(&mut map, &evil),
            Err(Unrepresentable {
                what: "a group name"
            })
        );
    }
}
