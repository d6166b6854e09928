//! High availability against the real cluster: two real operator processes compete for one
//! Lease (with the operator's own RBAC, from `config/rbac`), a ServiceAccount request renews its
//! token every ~5 s, and the leader is SIGKILLed or SIGTERMed. The other takes over in time,
//! the renewals go on, and the request keeps exactly one Secret.

mod support;

use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use support::{
    Cluster, Namespace, cluster, eventually, kubectl, kubectl_result,
    operator::{Issuer, LEASE_NAMESPACE, Operator, operator_kubeconfig},
    requests::{apply_request, wait_for_reason},
};

const REQUEST: &str = "ha";

/// A ServiceAccount request renewing ~5 s after each issue, and two operators electing a leader
/// with their own Lease; the first one started leads.
struct Setup {
    cluster: &'static Cluster,
    namespace: Namespace,
    lease: String,
    leader: Operator,
    follower: Operator,
}

impl Setup {
    fn new(prefix: &str) -> Setup {
        let cluster = cluster();
        // The CRDs come with the operator's installation, and the request is applied before any
        // operator starts.
        operator_kubeconfig(cluster);
        let namespace = Namespace::new(cluster, prefix);
        let ns = namespace.name.as_str();
        let lease = format!("ha-{ns}");
        let manifest = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n  namespace: {ns}\n  annotations:\n    kubeconfig.dev/issuable: \"true\"\n"
        );
        let file = support::requests::write_temp(&manifest);
        kubectl(cluster, &["apply", "-f", file.path().to_str().unwrap()]);
        apply_request(
            cluster,
            ns,
            REQUEST,
            "serviceAccount: {name: sa, expirationSeconds: 600}\n  renewBefore: 595s",
        );
        let args = [
            "--leader-elect=true",
            "--leader-election-namespace",
            LEASE_NAMESPACE,
            "--leader-election-lease-name",
            &lease,
        ];
        let leader = Operator::start(cluster, ns, Issuer::Main, &args);
        let setup = Setup {
            cluster,
            lease: lease.clone(),
            follower: Operator::start(cluster, ns, Issuer::Main, &args),
            leader,
            namespace,
        };
        // The first replica takes the free Lease at start-up, before the second starts.
        eventually(
            Duration::from_secs(10),
            "the first operator holds the Lease",
            || setup.holder_is(&setup.leader),
        );
        wait_for_reason(cluster, setup.ns(), REQUEST, "Issued");
        setup.wait_for_renewal(&mut HashSet::new(), "under the first leader");
        assert!(
            !setup
                .follower
                .logs()
                .contains("leading: starting the controller"),
            "the follower must not run a controller while the other leads:\n{}",
            setup.follower.logs()
        );
        setup
    }

    fn ns(&self) -> &str {
        &self.namespace.name
    }

    /// `kubectl get KIND NAME -o jsonpath=PATH` in the test namespace.
    fn field(&self, kind: &str, name: &str, path: &str) -> Result<String, String> {
        let jsonpath = format!("jsonpath={path}");
        kubectl_result(
            self.cluster,
            &["get", kind, name, "-n", self.ns(), "-o", &jsonpath],
        )
    }

    fn holder(&self) -> Option<String> {
        kubectl_result(
            self.cluster,
            &[
                "get",
                "lease",
                &self.lease,
                "-n",
                LEASE_NAMESPACE,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        )
        .ok()
        .filter(|holder| !holder.is_empty())
    }

    /// Identities are `<hostname>-<pid>` outside a pod.
    fn holder_is(&self, operator: &Operator) -> bool {
        self.holder()
            .is_some_and(|holder| holder.ends_with(&format!("-{}", operator.pid())))
    }

    /// How long until the follower holds the Lease, polled every 50 ms.
    fn time_until_follower_leads(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        while !self.holder_is(&self.follower) {
            assert!(
                start.elapsed() < limit + Duration::from_secs(10),
                "the follower did not take the Lease within {:?}; holder {:?}\n{}",
                start.elapsed(),
                self.holder(),
                self.follower.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// A fingerprint of the kubeconfig (so no token is ever printed), if the Secret exists.
    fn kubeconfig_fingerprint(&self) -> Option<u64> {
        let secret = self.field("kcr", REQUEST, "{.status.secretName}").ok()?;
        let data = self
            .field("secret", &secret, "{.data.kubeconfig}")
            .ok()
            .filter(|data| !data.is_empty())?;
        let mut hasher = DefaultHasher::new();
        data.hash(&mut hasher);
        Some(hasher.finish())
    }

    /// Waits until the Secret holds a kubeconfig not seen before (renewal fires every ~5 s),
    /// and adds it to `seen`.
    fn wait_for_renewal(&self, seen: &mut HashSet<u64>, when: &str) {
        if let Some(current) = self.kubeconfig_fingerprint() {
            seen.insert(current);
        }
        eventually(
            Duration::from_secs(30),
            &format!("the token in the Secret is renewed {when}"),
            || {
                self.kubeconfig_fingerprint()
                    .is_some_and(|fingerprint| seen.insert(fingerprint))
            },
        );
    }

    /// Exactly one kubeconfig Secret for the request: the one its status names, controlled by it.
    fn assert_exactly_one_secret(&self) {
        let uid = self
            .field("kcr", REQUEST, "{.metadata.uid}")
            .unwrap_or_else(|e| panic!("{e}"));
        let status_name = self
            .field("kcr", REQUEST, "{.status.secretName}")
            .unwrap_or_else(|e| panic!("{e}"));
        let list: serde_json::Value = serde_json::from_str(&kubectl(
            self.cluster,
            &["get", "secrets", "-n", self.ns(), "-o", "json"],
        ))
        .expect("kubectl prints JSON");
        let owned: Vec<String> = list["items"]
            .as_array()
            .expect("a list")
            .iter()
            .filter(|secret| {
                secret["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|owners| owners.iter().any(|owner| owner["uid"] == uid.as_str()))
                    || secret["metadata"]["labels"]["kubeconfig.dev/request"] == REQUEST
            })
            .map(|secret| secret["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(
            owned,
            [status_name],
            "exactly one Secret belongs to the request"
        );
        let controller = self
            .field(
                "secret",
                &owned[0],
                "{.metadata.ownerReferences[?(@.controller==true)].uid}",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(controller, uid, "the request controls its Secret");
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The operators first: a leader would create the Lease again.
        self.leader.kill();
        self.follower.kill();
        let _ = kubectl_result(
            self.cluster,
            &[
                "delete",
                "lease",
                &self.lease,
                "-n",
                LEASE_NAMESPACE,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
    }
}

#[test]
fn sigkill_of_the_leader_hands_over_within_15_s_and_renewals_go_on() {
    let mut setup = Setup::new("ha-kill");
    let mut seen = HashSet::new();
    setup.leader.kill();
    let takeover = setup.time_until_follower_leads(Duration::from_secs(15));
    println!("SIGKILL takeover: {:.2} s", takeover.as_secs_f64());
    assert!(
        takeover <= Duration::from_secs(15),
        "took {takeover:?} to take over after SIGKILL"
    );
    setup.wait_for_renewal(&mut seen, "by the new leader");
    setup.wait_for_renewal(&mut seen, "by the new leader, again");
    wait_for_reason(setup.cluster, setup.ns(), REQUEST, "Issued");
    setup.assert_exactly_one_secret();
}

#[test]
fn sigterm_of_the_leader_drains_http_and_hands_over_within_3_s() {
    let mut setup = Setup::new("ha-term");
    let mut seen = HashSet::new();
    // A request in flight: its head is not finished when SIGTERM arrives.
    let mut in_flight = TcpStream::connect(setup.leader.address()).expect("connect");
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(in_flight, "GET /healthz HTTP/1.1\r\nHost: operator\r\n").unwrap();
    thread::sleep(Duration::from_millis(200));

    setup.leader.terminate();
    let takeover = setup.time_until_follower_leads(Duration::from_secs(3));
    println!("SIGTERM takeover: {:.2} s", takeover.as_secs_f64());
    assert!(
        takeover <= Duration::from_secs(3),
        "took {takeover:?} to take over after SIGTERM"
    );

    // No new connections, while the one in flight is still answered.
    assert!(
        TcpStream::connect(setup.leader.address()).is_err(),
        "a stopping operator accepts no new connections"
    );
    in_flight
        .write_all(b"Connection: close\r\n\r\n")
        .expect("finish the request");
    let mut answer = String::new();
    let _ = in_flight.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the request in flight at SIGTERM is answered: {answer:?}"
    );

    let status = setup
        .leader
        .wait_exit(Duration::from_secs(15))
        .expect("the operator exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    let logs = setup.leader.logs();
    assert!(logs.contains("released the Lease"), "{logs}");

    setup.wait_for_renewal(&mut seen, "by the new leader");
    wait_for_reason(setup.cluster, setup.ns(), REQUEST, "Issued");
    setup.assert_exactly_one_secret();
    // The new leader is ready (its cache synced), and so answers the probes a Service uses.
    let follower = setup.follower.base_url.clone();
    eventually(Duration::from_secs(10), "the new leader is ready", || {
        support::requests::http_get(&follower, "/readyz", None, "").status == 200
    });
}
