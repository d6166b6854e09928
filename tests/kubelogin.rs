//! The exec kubeconfig with its real consumer: kubelogin v1.36.3 (`kubectl oidc-login`, built
//! from its upstream source by tests/cluster/up.sh), run by real kubectl from the kubeconfig the
//! operator serves, unmodified. kubelogin logs in with the browser flow (authorization code with
//! PKCE, redirected to its own port on localhost): the "browser" it opens is `xdg-open` on PATH,
//! which here records the URL for headless Chromium to visit; Chromium then logs in at the real
//! Dex through its LDAP form. When the ID token expires, kubelogin refreshes it with its refresh
//! token, and kubectl goes on working with no second login.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use browser::{Chromedriver, log_in_at_dex};
use support::{
    Cluster, Namespace, cluster, id_token, id_token_short_lived,
    operator::{Issuer, Operator},
    requests::{http_get_kubeconfig, write_temp},
    which,
};

/// kubelogin listens on localhost:8000, or 18000 when that is taken (the redirect URLs Dex has
/// registered), so at most two logins can run at once: the tests take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long one login or one refreshed `kubectl` may take before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(90);

/// A user's machine: a home of its own (kubelogin's token cache), and on PATH nothing but
/// kubectl, kubelogin as kubectl's plugin, and an `xdg-open` that records each URL it is asked
/// to open, one per line.
struct Workstation {
    home: tempfile::TempDir,
    opened: PathBuf,
}

impl Workstation {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        fs::create_dir(&bin).unwrap();
        symlink(
            which("kubectl").expect("kubectl on PATH"),
            bin.join("kubectl"),
        )
        .unwrap();
        symlink(
            which("kubectl-oidc_login").unwrap_or_else(|| {
                panic!(
                    "kubectl-oidc_login is not on PATH: tests/cluster/up.sh builds it into \
                     target/cluster/bin from ../shared/tools/kubelogin"
                )
            }),
            bin.join("kubectl-oidc_login"),
        )
        .unwrap();
        let opened = home.path().join("opened");
        let xdg_open = bin.join("xdg-open");
        fs::write(
            &xdg_open,
            format!("#!/bin/sh\necho \"$1\" >> '{}'\n", opened.display()),
        )
        .unwrap();
        fs::set_permissions(&xdg_open, fs::Permissions::from_mode(0o755)).unwrap();
        Self { home, opened }
    }

    /// `kubectl --kubeconfig FILE ARGS... auth whoami` with only this machine's PATH and home.
    fn whoami(&self, kubeconfig: &Path, args: &[&str]) -> Child {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .args([
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ])
            .env_clear()
            .env("PATH", self.home.path().join("bin"))
            .env("HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl")
    }

    /// The URLs kubelogin asked the browser to open so far.
    fn opened(&self) -> Vec<String> {
        fs::read_to_string(&self.opened)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// What kubectl printed, once it exits within [`PATIENCE`]; killed otherwise.
async fn finished(mut child: Child) -> Result<String, String> {
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = child.wait_with_output().unwrap();
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// The operator for `issuer` with the exec format on, and the exec kubeconfig it serves alice.
fn exec_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    issuer: Issuer,
    extra_args: &[&str],
    token: impl FnOnce() -> String,
) -> tempfile::NamedTempFile {
    let scopes = format!(
        "email,groups,offline_access,audience:server:client_id:{}",
        cluster.oidc_client_id
    );
    let mut args = vec![
        "--exec-client-id",
        &cluster.env["OIDC_PUBLIC_CLIENT_ID"],
        "--exec-extra-scopes",
        &scopes,
    ];
    args.extend_from_slice(extra_args);
    let operator = Operator::start(cluster, namespace, issuer, &args);
    let response = http_get_kubeconfig(&operator.base_url, Some(&token()), "?format=exec");
    assert_eq!(response.status, 200, "{}", response.body);
    write_temp(&response.body)
}

/// Runs `kubectl auth whoami` on `machine`, logging in through the browser when kubelogin opens
/// one; returns the username kubectl printed.
async fn whoami_logging_in(
    cluster: &Cluster,
    machine: &Workstation,
    kubeconfig: &Path,
    args: &[&str],
) -> String {
    let mut kubectl = machine.whoami(kubeconfig, args);
    let deadline = Instant::now() + PATIENCE;
    let url = loop {
        if let Some(url) = machine.opened().first() {
            break url.clone();
        }
        if Instant::now() > deadline || kubectl.try_wait().unwrap().is_some() {
            let _ = kubectl.kill();
            let stderr = finished(kubectl).await.unwrap_err();
            panic!("kubelogin opened no browser; kubectl said: {stderr}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(profile.path()).await;
    browser.goto(&url).await.unwrap();
    log_in_at_dex(&browser, &cluster.alice_username, &cluster.alice_password).await;
    let who = finished(kubectl)
        .await
        .unwrap_or_else(|e| panic!("kubectl with kubelogin's browser login failed: {e}"));
    browser.close().await.unwrap();
    who
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelogin_logs_in_through_the_browser_and_kubectl_works_as_alice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "kubelogin-browser");
    let kubeconfig = tokio::task::block_in_place(|| {
        exec_kubeconfig(cluster, &namespace.name, Issuer::Main, &[], || {
            id_token(cluster, "alice")
        })
    });
    let machine = Workstation::new();
    let who = whoami_logging_in(cluster, &machine, kubeconfig.path(), &[]).await;
    assert_eq!(who, cluster.alice_username);
    // kubelogin opened its own local address, which sends the browser on to Dex.
    let opened = machine.opened();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(opened[0].starts_with("http://localhost:"), "{opened:?}");
    // The token is cached: the next kubectl needs no login.
    let again = finished(machine.whoami(kubeconfig.path(), &[]))
        .await
        .unwrap();
    assert_eq!(again, cluster.alice_username);
    assert_eq!(machine.opened().len(), 1);
}

/// The short-lived Dex's ID tokens expire 5 s after issue; the API server with
/// `--authentication-config` trusts it. After expiry, kubectl still works, and kubelogin opened
/// no second browser: it refreshed the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelogin_refreshes_an_expired_token_without_a_new_login() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "kubelogin-refresh");
    let kubeconfig = tokio::task::block_in_place(|| {
        exec_kubeconfig(cluster, &namespace.name, Issuer::ShortLived, &[], || {
            id_token_short_lived(cluster, "alice")
        })
    });
    let server = ["--server", cluster.env["KUBE_AUTHN_SERVER"].as_str()];
    let machine = Workstation::new();
    // That API server's configuration prefixes the short-lived Dex's usernames.
    let alice = format!("short:{}", cluster.alice_username);
    let who = whoami_logging_in(cluster, &machine, kubeconfig.path(), &server).await;
    assert_eq!(who, alice);
    let cached = cached_tokens(&machine);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after_expiry = finished(machine.whoami(kubeconfig.path(), &server))
        .await
        .unwrap_or_else(|e| panic!("kubectl after the token expired: {e}"));
    assert_eq!(after_expiry, alice);
    assert_eq!(machine.opened().len(), 1, "kubelogin logged in again");
    assert_ne!(
        cached_tokens(&machine),
        cached,
        "kubelogin's cache holds the refreshed token"
    );
}

/// kubectl 1.35's credential plugin allowlist in kuberc names the exact program an exec
/// kubeconfig runs, in the lines the download page shows. With `exec.command:
/// kubectl-oidc_login`, allowing kubelogin alone is enough; the default kubeconfig, which runs
/// kubectl (and so any plugin), is refused by the same kuberc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kuberc_that_allows_only_kubelogin_runs_the_plugin_kubeconfig() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "kubelogin-kuberc");
    let alice = || id_token(cluster, "alice");
    let (plugin, through_kubectl) = tokio::task::block_in_place(|| {
        (
            exec_kubeconfig(
                cluster,
                &namespace.name,
                Issuer::Main,
                &["--exec-command", "kubectl-oidc_login"],
                alice,
            ),
            exec_kubeconfig(cluster, &namespace.name, Issuer::Main, &[], alice),
        )
    });
    let machine = Workstation::new();
    let kube_dir = machine.home.path().join(".kube");
    fs::create_dir_all(&kube_dir).unwrap();
    fs::write(
        kube_dir.join("kuberc"),
        "apiVersion: kubectl.config.k8s.io/v1beta1\nkind: Preference\n\
         credentialPluginPolicy: Allowlist\ncredentialPluginAllowlist:\n- name: kubectl-oidc_login\n",
    )
    .unwrap();
    let refused = finished(machine.whoami(through_kubectl.path(), &[]))
        .await
        .unwrap_err();
    assert!(
        refused.contains("is not permitted by the credential plugin allowlist"),
        "{refused}"
    );
    assert!(machine.opened().is_empty(), "kubectl ran nothing");
    let who = whoami_logging_in(cluster, &machine, plugin.path(), &[]).await;
    assert_eq!(who, cluster.alice_username);
}

/// kubelogin's token cache (`~/.kube/cache/oidc-login`), file by file.
fn cached_tokens(machine: &Workstation) -> Vec<String> {
    let dir = machine.home.path().join(".kube/cache/oidc-login");
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
        .collect();
    files.sort();
    files
}
