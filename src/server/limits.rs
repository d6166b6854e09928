//! Limits on what one client may take. Per-request limits that a route group can put in front of
//! its handlers: a budget of requests per client address, and a time limit. They are layers
//! rather than listener settings because groups differ: the credential download is rate limited,
//! probes must keep answering while a client is throttled, and a streaming route (the proxy)
//! cannot have a request timeout. And [`SlotsPerKey`], the cap on what one client address or one
//! user holds at once (connections, requests in flight, streams), for the listener and the proxy.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};

use super::RETRY_AFTER_SECONDS;
use crate::config::HttpConfig;

/// Upper bound for answering one request of a time-limited group, including a key fetch from the
/// issuer. Longer requests get 503, so a stuck issuer cannot pile up connections.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) type ClientLimiter = DefaultKeyedRateLimiter<IpAddr>;

/// What `serve` hands every route group; each takes what applies to it.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestLimits {
    /// Requests one client address may make per minute on a rate-limited group.
    pub(super) per_minute_per_client: NonZeroU32,
    /// The longest a request of a time-limited group may take.
    pub(super) timeout: Duration,
}

impl RequestLimits {
    pub(super) fn from_config(config: &HttpConfig) -> Self {
        Self {
            // The configuration refuses 0.
            per_minute_per_client: NonZeroU32::new(config.requests_per_minute_per_client)
                .unwrap_or(NonZeroU32::MIN),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// A fresh per-client budget. Without pruning, every address ever seen would keep an entry,
    /// so a task forgets idle clients every minute; it holds the limiter weakly and ends once the
    /// routes using it are gone. Needs a Tokio runtime.
    pub(super) fn client_limiter(&self) -> Arc<ClientLimiter> {
        let limiter = Arc::new(RateLimiter::keyed(Quota::per_minute(
            self.per_minute_per_client,
        )));
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                match weak.upgrade() {
                    Some(limiter) => limiter.retain_recent(),
                    None => break,
                }
            }
        });
        limiter
    }
}

/// One bucket per IPv4 address, and one per /64 for IPv6: a single IPv6 host usually holds a
/// whole /64 and could otherwise take a fresh address for every request. IPv4 clients of a
/// dual-stack listener arrive as IPv4-mapped addresses and count as their IPv4 address.
pub(super) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// A cap on what one key (a client address, a verified user) holds at once: connections,
/// requests in flight, streams. A global pool alone lets one tenant take every slot; with a
/// quota per key, the others' share stays free. Entries exist only while slots are held, so
/// keys a client makes up cost nothing once it lets go.
#[derive(Debug)]
pub(super) struct SlotsPerKey<K> {
    limit: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One slot of a [`SlotsPerKey`], given back when dropped.
#[derive(Debug)]
pub(super) struct Slot<K: Hash + Eq> {
    quota: Arc<SlotsPerKey<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> SlotsPerKey<K> {
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::default(),
        })
    }

    /// A slot for `key`, or `None` when it holds `limit` already.
    pub(super) fn try_take(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            quota: Arc::clone(self),
            key,
        })
    }

    /// Slots `key` holds now.
    #[cfg(test)]
    pub(super) fn held(&self, key: &K) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.quota.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// 429 once a client address has used its budget, with the seconds until its next request
/// would be allowed. The `ConnectInfo` extractor answers 500 if the accept loop did not attach
/// the address, so a wiring mistake cannot silently put every client into one bucket.
pub(super) async fn rate_limit(
    State(limiter): State<Arc<ClientLimiter>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let Err(not_until) = limiter.check_key(&client_key(client.ip())) else {
        return next.run(request).await;
    };
    let wait = not_until.wait_time_from(limiter.clock().now());
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from(seconds))],
        "too many requests from this address; try again later\n",
    )
        .into_response()
}

/// 503 with `Retry-After` for a request that takes longer than `limit`, so a stuck issuer cannot
/// pile up connections.
pub(super) async fn time_limit(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            )],
            "the request took too long; try again later\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_limit_of_slots_and_each_comes_back_when_dropped() {
        let quota = SlotsPerKey::new(2);
        let first = quota.try_take("bob").unwrap();
        let second = quota.try_take("bob").unwrap();
        assert!(quota.try_take("bob").is_none(), "bob holds his limit");
        let alice = quota
            .try_take("alice")
            .expect("bob's slots are not alice's");
        drop(first);
        let third = quota.try_take("bob").expect("a dropped slot comes back");
        drop((second, third, alice));
        assert_eq!(quota.held(&"bob"), 0);
        assert!(
            quota.held.lock().unwrap().is_empty(),
            "no entry outlives its slots"
        );
    }

    #[test]
    fn an_ipv6_host_cannot_dodge_the_rate_limit_within_its_64() {
        let key = |ip: &str| client_key(ip.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }
}
