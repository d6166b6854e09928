//! The binary's command line: a bad configuration stops start-up with exit code 2 and one line
//! naming the field, before any connection is attempted.

use std::process::{Command, Output};

/// `run` with the required settings, all valid; tests add the one setting they check.
const REQUIRED: [&str; 7] = [
    "run",
    "--server",
    "https://k",
    "--oidc-issuer-url",
    "https://dex",
    "--oidc-client-id",
    "c",
];

/// The binary with `args` and an empty environment; tests add what they set.
fn operator_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubeconfig-operator"));
    command.args(args).env_clear();
    command
}

fn operator(args: &[&str]) -> Output {
    operator_command(args)
        .output()
        .expect("run kubeconfig-operator")
}

#[test]
fn bad_configuration_exits_2_with_one_line_naming_the_field() {
    let hmac = [&REQUIRED[..], &["--oidc-signing-algorithms", "HS256"]].concat();
    let cases: [(&[&str], &str); 4] = [
        (&["run"], "server: is required"),
        (
            &[
                "run",
                "--server",
                "http://127.0.0.1:6443",
                "--oidc-issuer-url",
                "https://dex",
                "--oidc-client-id",
                "c",
            ],
            "server: \"http://127.0.0.1:6443\" must use https",
        ),
        (&hmac, "oidc.signingAlgorithms: \"HS256\" is not allowed"),
        (
            &["run", "--config", "/nonexistent/operator.yaml"],
            "--config: cannot read",
        ),
    ];
    for (args, expected) in cases {
        let output = operator(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("invalid configuration: "), "{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn a_bad_authentication_configuration_exits_2_naming_the_field() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: http://dex.example\n    audiences: [a]\n  claimMappings:\n    username: {claim: sub, prefix: ''}\n",
    )
    .unwrap();
    let path = file.path().to_str().unwrap();
    let output = operator(&[
        "run",
        "--server",
        "https://k",
        "--authentication-config",
        path,
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "invalid configuration: oidc.authenticationConfig: jwt[0].issuer.url: Invalid value: \"http://dex.example\": URL scheme must be https"
    );
}

#[test]
fn unknown_keys_in_the_config_file_are_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "server: https://k\nservr: typo\n").unwrap();
    let output = operator(&["run", "--config", file.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("servr"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn allowed_origins_are_read_from_the_flag_the_environment_and_the_file() {
    const REFUSAL: &str = "invalid configuration: http.allowedOrigins: \"https://Console.example\" is not an origin as browsers send it; write \"https://console.example\"";
    let flag = [
        &REQUIRED[..],
        &["--allowed-origin", "https://Console.example"],
    ]
    .concat();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "http:\n  allowedOrigins: [\"https://Console.example\"]\n",
    )
    .unwrap();
    let from_file = [&REQUIRED[..], &["--config", file.path().to_str().unwrap()]].concat();
    for (source, output) in [
        ("flag", operator(&flag)),
        (
            "environment",
            operator_command(&REQUIRED)
                .env(
                    "KUBECONFIG_OPERATOR_ALLOWED_ORIGIN",
                    "https://ok.example,https://Console.example",
                )
                .output()
                .expect("run kubeconfig-operator"),
        ),
        ("file", operator(&from_file)),
    ] {
        assert_eq!(output.status.code(), Some(2), "{source}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr).trim_end(),
            REFUSAL,
            "{source}"
        );
    }
}

#[test]
fn version_prints_the_crate_version() {
    let output = operator(&["version"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("kubeconfig-operator {}", env!("CARGO_PKG_VERSION"))
    );
}

/// jemalloc reports a typo in its compiled-in options only as a warning, and a symbol the linker
/// dropped not at all; its statistics at exit show the options it actually ran with.
#[test]
#[cfg_attr(
    not(feature = "jemalloc"),
    ignore = "built without the jemalloc feature"
)]
fn the_binary_allocates_through_jemalloc_with_its_options() {
    let output = operator_command(&["version"])
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run kubeconfig-operator");
    assert!(output.status.success());
    let stats = String::from_utf8_lossy(&output.stderr);
    for option in [
        "opt.background_thread: true",
        "opt.narenas: 2",
        "opt.dirty_decay_ms: 1000",
    ] {
        assert!(stats.contains(option), "{option} not in:\n{stats}");
    }
}

/// Text logs are for terminals; written to a pipe or a file (a container's log, `> file`) they
/// carry no colour codes, which `kubectl logs` and log collectors would show as garbage.
#[test]
fn text_logs_into_a_pipe_have_no_colour_codes() {
    // No kubeconfig and no in-cluster account: start-up fails after logging is set up, with an
    // error line in the default (text) format.
    let output = operator_command(&REQUIRED)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("run kubeconfig-operator");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("cannot configure the Kubernetes client"),
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
}
