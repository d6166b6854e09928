//! The operator's YAML configuration file: arbitrary bytes → `Settings` → `Config::resolve`.
//!
//! Properties: nothing panics, and a `ConfigError` renders as exactly one line (it is printed as
//! the process's last words at start-up, and log shippers split on newlines).
//!
//! File paths in the YAML are confined to a small fixture directory (only the last component
//! is kept), so the fuzzer exercises the "read the CA file / is it a file" branches without ever
//! touching the real filesystem (think `/dev/zero` or `/dev/stdin`, which would hang the run
//! rather than find a bug: the config file is written by the operator's owner).
#![no_main]

use std::{
    path::{Path, PathBuf},
    sync::LazyLock,
};

use kubeconfig_operator::config::{Config, Settings};
use libfuzzer_sys::fuzz_target;

/// A self-signed certificate's PEM shape is enough for `rustls_pemfile::certs`, which only
/// splits and base64-decodes; the DER inside is not parsed.
const CA_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2F0ZXN0\n-----END CERTIFICATE-----\n";

static FIXTURES: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("kubeconfig-operator-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("dir")).unwrap();
    std::fs::write(dir.join("ca.pem"), CA_PEM).unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    std::fs::write(
        dir.join("garbage"),
        b"\x00\xffnot pem\n-----BEGIN CERTIFICATE-----\n!!",
    )
    .unwrap();
    std::fs::write(dir.join("tls.crt"), CA_PEM).unwrap();
    std::fs::write(
        dir.join("tls.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    dir
});

fn confine(path: &mut Option<PathBuf>) {
    if let Some(p) = path.take() {
        let name = p.file_name().map(|n| n.to_owned()).unwrap_or_default();
        *path = Some(Path::new(&*FIXTURES).join(name));
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(mut file) = kubeconfig_operator::yaml::from_str::<Settings>(&text) else {
        return;
    };
    confine(&mut file.kubeconfig.certificate_authority_file);
    confine(&mut file.oidc.ca_file);
    confine(&mut file.oidc.authentication_config);
    confine(&mut file.http.tls_cert_file);
    confine(&mut file.http.tls_key_file);

    if let Err(error) = Config::resolve(file, &Settings::default()) {
        let shown = error.to_string();
        assert!(
            !shown.contains(['\n', '\r']),
            "a configuration error spans several lines: {shown:?}"
        );
        assert!(!shown.is_empty());
    }
});
