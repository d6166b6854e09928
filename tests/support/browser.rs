//! A real browser for the tests that log in at Dex: headless Chromium driven through chromedriver
//! (both from Debian's packages, see scripts/install-deps.sh), and Dex's LDAP login form.
#![allow(dead_code)]

use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use super::support::operator::free_port;

/// The browser flags that work on an offline machine: no sandbox (root in CI), no GPU, no
/// network traffic of the browser's own, and a fresh profile.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// chromedriver on a free port, stopped when dropped.
pub struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (Debian package chromium-driver; scripts/install-deps.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver does not listen on {port}"
            );
            thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }

    /// A browser session with a profile of its own; Dex's certificate is signed by the test
    /// cluster's CA, which the browser does not know.
    pub async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|&arg| arg.to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fills in Dex's LDAP login form as `user` and submits it.
pub async fn log_in_at_dex(browser: &Client, user: &str, password: &str) {
    let login = browser
        .wait()
        .for_element(Locator::Css("input[name=login]"))
        .await
        .expect("Dex's login form");
    login.send_keys(user).await.unwrap();
    browser
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    click(browser, Locator::Css("#submit-login"), "Dex's login button").await;
}

/// Waits for the element, then clicks it.
pub async fn click(browser: &Client, locator: Locator<'_>, what: &str) {
    browser
        .wait()
        .for_element(locator)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .click()
        .await
        .unwrap();
}
