//! The kubeconfig page in a real browser: headless Chromium driven through chromedriver (both
//! from Debian's packages, see scripts/install-deps.sh) logs in at the real Dex as alice through
//! its LDAP login form, sees her name, downloads the token kubeconfig within the session, and
//! real `kubectl auth whoami` with it prints alice; the page's `kubectl create secret` command
//! and KubeconfigRequest, run as alice, issue the same kubeconfig into a Secret. The same browser
//! shows that a forged or replayed `state` and a callback without the login cookie are refused,
//! that the cookies carry the flags the page promises, and that logging out needs the page's own
//! form.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use axum_extra::extract::cookie::SameSite;
use browser::{Chromedriver, click, log_in_at_dex};
use fantoccini::{Client, Locator, cookies::Cookie, key::Key};
use support::{
    Cluster, Namespace, cluster, eventually, grant, kubectl_plain,
    operator::{Issuer, Operator},
    requests::{decoded_secret_key, wait_for_reason, write_temp},
};

/// The operator with the page on the port whose redirect URL the test cluster registered at Dex.
fn operator_with_page(cluster: &Cluster, namespace: &str) -> (Operator, String) {
    let redirect = cluster
        .env
        .get("CONSOLE_REDIRECT_URL")
        .expect("the cluster's env names CONSOLE_REDIRECT_URL (restart an older cluster: make cluster-down cluster-up)")
        .clone();
    let base = redirect.trim_end_matches("/callback").to_owned();
    let listen = base.trim_start_matches("http://").to_owned();
    let secret = write_temp(&cluster.oidc_client_secret);
    let config = write_temp(&format!(
        "console:\n  clientSecretFile: {}\n  redirectUrl: {redirect}\n",
        secret.path().display()
    ));
    let config_path = config.path().to_str().unwrap().to_owned();
    let operator = Operator::start(
        cluster,
        namespace,
        Issuer::Main,
        &[
            "--config",
            &config_path,
            "--listen",
            &listen,
            "--exec-client-id",
            &cluster.env["OIDC_PUBLIC_CLIENT_ID"],
        ],
    );
    // The operator read both files at start-up.
    drop((secret, config));
    (operator, base)
}

/// `/download{query}` with the browser's session cookie: a 200 with the page's header policy.
async fn download(base: &str, session_cookie: &str, query: &str) -> reqwest::Response {
    let response = http()
        .get(format!("{base}/download{query}"))
        .header("cookie", session_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET /download{query}");
    assert_page_headers(&response);
    response
}

async fn text_of(browser: &Client, id: &str) -> String {
    browser
        .wait()
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id} on the page: {e}"))
        .text()
        .await
        .unwrap()
}

fn cookie_named<'a>(cookies: &'a [Cookie<'static>], name: &str) -> Option<&'a Cookie<'static>> {
    cookies.iter().find(|cookie| cookie.name() == name)
}

/// A plain HTTP client that, unlike a browser, shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn assert_page_headers(response: &reqwest::Response) {
    let headers = response.headers();
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_logs_in_in_a_browser_and_her_kubeconfig_works() {
    let cluster = cluster();
    let namespace = Namespace::new(cluster, "console");
    let (operator, base) = operator_with_page(cluster, &namespace.name);
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(profile.path()).await;

    // The page, logged out: a link to log in, the first stop of the keyboard.
    browser.goto(&format!("{base}/")).await.unwrap();
    browser
        .wait()
        .for_element(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(&Key::Tab.to_string())
        .await
        .unwrap();
    let focused = browser.active_element().await.unwrap();
    assert_eq!(focused.text().await.unwrap(), "Log in");
    focused.send_keys(&Key::Enter.to_string()).await.unwrap();

    // At Dex, the login cookie is in the browser: HttpOnly, SameSite=Lax, not Secure (plain
    // HTTP on loopback), scoped to the whole page.
    browser
        .wait()
        .for_element(Locator::Css("input[name=login]"))
        .await
        .expect("the browser is sent to Dex's login form");
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(&cluster.oidc_issuer_url)
    );
    let cookies = browser.get_all_cookies().await.unwrap();
    let login = cookie_named(&cookies, "kubeconfig-login").expect("the login cookie");
    assert_eq!(login.http_only(), Some(true));
    assert_eq!(login.same_site(), Some(SameSite::Lax));
    assert_ne!(login.secure(), Some(true));
    assert_eq!(login.path(), Some("/"));

    log_in_at_dex(&browser, &cluster.alice_username, &cluster.alice_password).await;

    // Back on the page, as alice.
    assert_eq!(text_of(&browser, "display-name").await, "Alice");
    assert_eq!(text_of(&browser, "username").await, cluster.alice_username);
    assert!(text_of(&browser, "expires-at").await.ends_with("UTC"));
    assert_eq!(
        browser.current_url().await.unwrap().as_str(),
        format!("{base}/")
    );
    // The page's own script ran under its CSP: it shows the copy buttons.
    let copy = browser
        .find(Locator::Css("button[data-copy=request-yaml]"))
        .await
        .unwrap();
    assert!(copy.is_displayed().await.unwrap());
    assert!(
        text_of(&browser, "request-yaml")
            .await
            .contains("kind: KubeconfigRequest")
    );
    assert_eq!(
        browser
            .find(Locator::Id("download-exec"))
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap()
            .as_deref(),
        Some("/download?format=exec")
    );

    let cookies = browser.get_all_cookies().await.unwrap();
    assert!(
        cookie_named(&cookies, "kubeconfig-login").is_none(),
        "the login cookie is used up"
    );
    let session = cookie_named(&cookies, "kubeconfig-session").expect("the session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.same_site(), Some(SameSite::Lax));
    assert_ne!(session.secure(), Some(true));
    assert_eq!(session.path(), Some("/"));
    let session_cookie = format!("kubeconfig-session={}", session.value());

    // The token kubeconfig, fetched with the browser's session, saved, and used by kubectl.
    let response = download(&base, &session_cookie, "").await;
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"local.kubeconfig\""
    );
    let kubeconfig = response.text().await.unwrap();
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("local.kubeconfig");
    std::fs::write(&file, &kubeconfig).unwrap();
    let whoami = kubectl_plain(&[
        "--kubeconfig",
        file.to_str().unwrap(),
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])
    .expect("kubectl auth whoami with the downloaded kubeconfig");
    assert_eq!(whoami, cluster.alice_username);

    // The kubelogin kubeconfig: it logs in with the public client and holds no token.
    let exec = download(&base, &session_cookie, "?format=exec")
        .await
        .text()
        .await
        .unwrap();
    assert!(exec.contains("oidc-login"), "{exec}");
    assert!(
        exec.contains(&cluster.env["OIDC_PUBLIC_CLIENT_ID"]),
        "{exec}"
    );
    assert!(
        !exec.contains(session.value()) && !exec.contains("token:"),
        "{exec}"
    );

    // The page's command and KubeconfigRequest, run as alice with only the rights they need,
    // issue the same kubeconfig into a Secret.
    grant(
        cluster,
        &namespace.name,
        "id-token-keeper",
        &cluster.alice_username,
        "create,get",
        "secrets",
        &[],
    );
    grant(
        cluster,
        &namespace.name,
        "request-maker",
        &cluster.alice_username,
        "create,get,patch",
        "kubeconfigrequests.kubeconfig.dev",
        &[],
    );
    let alice = directory.path().join("alice.kubeconfig");
    std::fs::write(&alice, &kubeconfig).unwrap();
    let context_namespace = format!("--namespace={}", namespace.name);
    kubectl_plain(&[
        "--kubeconfig",
        alice.to_str().unwrap(),
        "config",
        "set-context",
        "--current",
        &context_namespace,
    ])
    .unwrap();
    let secret_command = text_of(&browser, "secret-command").await;
    let request_yaml = text_of(&browser, "request-yaml").await;
    let as_alice = |program: &str, args: &[&str], stdin: &str| {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(directory.path())
            .env("KUBECONFIG", &alice)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait().unwrap().success()
    };
    // Retried until alice's Roles reach the authorizer.
    eventually(
        Duration::from_secs(30),
        "the page's kubectl create secret works for alice",
        || as_alice("bash", &["-c", &secret_command], ""),
    );
    eventually(
        Duration::from_secs(30),
        "alice applies the page's KubeconfigRequest",
        || as_alice("kubectl", &["apply", "-f", "-"], &request_yaml),
    );
    wait_for_reason(cluster, &namespace.name, "my-kubeconfig", "Issued");
    assert_eq!(
        decoded_secret_key(
            cluster,
            &namespace.name,
            "my-kubeconfig-kubeconfig",
            "kubeconfig"
        ),
        kubeconfig
    );

    // The token is in no URL, on no page, in no log line.
    let token = kubectl_plain(&[
        "--kubeconfig",
        file.to_str().unwrap(),
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.users[0].user.token}",
    ])
    .unwrap();
    assert!(token.len() > 100, "a token in the kubeconfig");
    assert!(!browser.source().await.unwrap().contains(&token));
    assert!(
        !browser
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(&token)
    );
    assert!(!operator.logs().contains(&token));

    // Logging out needs the page's Origin (or, under no-referrer, `Origin: null` with
    // `Sec-Fetch-Site: same-origin`, as the browser's own click below sends) and the session's
    // CSRF token.
    for (origin, site, csrf) in [
        ("https://evil.example", "cross-site", "x"),
        ("null", "cross-site", "x"),
        (base.as_str(), "same-origin", "not-the-token"),
    ] {
        let response = http()
            .post(format!("{base}/logout"))
            .header("cookie", &session_cookie)
            .header("origin", origin)
            .header("sec-fetch-site", site)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "logout from {origin} with {csrf}");
        assert_page_headers(&response);
    }
    click(&browser, Locator::Id("logout"), "the logout button").await;
    browser
        .wait()
        .for_element(Locator::LinkText("Log in"))
        .await
        .expect("logged out");
    let cookies = browser.get_all_cookies().await.unwrap();
    assert!(cookie_named(&cookies, "kubeconfig-session").is_none());

    // Logging out ended the session on the server too: a copy of the cookie made before no
    // longer downloads, and the session's token is revoked on every replica until it expires.
    let copied = http()
        .get(format!("{base}/download"))
        .header("cookie", &session_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(copied.status(), 401, "a copied session cookie after logout");
    assert_page_headers(&copied);
    let direct = http()
        .get(format!("{}/kube-config", operator.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);
    let refusal = direct.text().await.unwrap();
    assert!(refusal.starts_with("Revoked: "), "{refusal}");
    assert!(
        refusal.contains("alice@example.com logged out of the download page"),
        "{refusal}"
    );
    let revocations = support::kubectl(
        cluster,
        &[
            "get",
            "kcrev",
            "-l",
            "kubeconfig.dev/revoked-because=LoggedOut",
            "-o",
            "name",
        ],
    );
    let revoked = support::kubectl(
        cluster,
        &["get", "kcrev", "-o", "jsonpath={.items[*].spec.credential}"],
    );
    assert!(
        !revoked.contains(&token),
        "the token itself is never written"
    );

    // A forged state is refused, even with a live login cookie.
    click(&browser, Locator::LinkText("Log in"), "the login link").await;
    browser
        .wait()
        .for_element(Locator::Css("input[name=login]"))
        .await
        .expect("Dex's login form");
    browser
        .goto(&format!("{base}/callback?code=forged&state=forged"))
        .await
        .unwrap();
    assert!(
        text_of(&browser, "problem")
            .await
            .contains("state mismatch")
    );

    // A replayed state: a login whose state the test knows, completed in the browser...
    let started = http().get(format!("{base}/login")).send().await.unwrap();
    assert_eq!(started.status(), 303);
    assert_page_headers(&started);
    let authorize = url::Url::parse(started.headers()["location"].to_str().unwrap()).unwrap();
    let query: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert!(!query["scope"].contains("offline_access"));
    let state = query["state"].clone();
    let set_cookie = started.headers()["set-cookie"].to_str().unwrap();
    let login_cookie = Cookie::parse(set_cookie.to_owned()).unwrap();
    assert_eq!(login_cookie.name(), "kubeconfig-login");
    // The cookie as the operator set it, for the browser's host.
    let as_sent = || {
        let mut cookie = login_cookie.clone();
        cookie.set_domain("127.0.0.1");
        cookie
    };
    browser.goto(&format!("{base}/")).await.unwrap();
    browser.add_cookie(as_sent()).await.unwrap();
    browser.goto(authorize.as_str()).await.unwrap();
    log_in_at_dex(&browser, &cluster.alice_username, &cluster.alice_password).await;
    assert_eq!(text_of(&browser, "display-name").await, "Alice");
    // ...is refused when its cookie and answer come again,
    browser.add_cookie(as_sent()).await.unwrap();
    browser
        .goto(&format!("{base}/callback?code=replayed&state={state}"))
        .await
        .unwrap();
    assert!(text_of(&browser, "problem").await.contains("already used"));
    // and a callback without the login cookie is refused too.
    browser.delete_all_cookies().await.unwrap();
    browser
        .goto(&format!("{base}/callback?code=any&state={state}"))
        .await
        .unwrap();
    assert!(
        text_of(&browser, "problem")
            .await
            .contains("No login was started")
    );
    let response = http()
        .get(format!("{base}/callback?code=any&state={state}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_page_headers(&response);

    browser.close().await.unwrap();
    assert!(!operator.logs().contains(&token));
    for revocation in revocations.lines() {
        let _ = support::kubectl_result(cluster, &["delete", revocation]);
    }
}
