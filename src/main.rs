//! Wires the modules together: configuration, telemetry, the token verifier, the controller and
//! the HTTP server. Everything with logic lives in the library.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use clap::{Parser, Subcommand};
use kubeconfig_operator::{
    audit::AuditLog,
    config::{Config, OidcSettings, Settings},
    confirm::Confirmer,
    controller::{self, Context, FIELD_MANAGER, leader},
    crd, drift,
    events::Replica,
    metrics::Metrics,
    oidc::authn_config,
    oidc::{authenticator::Authenticator, revocations::Revocations, verify::Verifier},
    server::{self, HttpState, console::Console, proxy::BoundProxy},
    telemetry::{self, LogFormat},
};
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "kubeconfig-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller and the HTTP server.
    Run {
        #[command(flatten)]
        config: Box<Settings>,
        /// Log line format.
        #[arg(
            long,
            value_enum,
            default_value_t,
            env = "KUBECONFIG_OPERATOR_LOG_FORMAT"
        )]
        log_format: LogFormat,
    },
    /// Print a CustomResourceDefinition as YAML.
    Crd {
        #[arg(value_enum, default_value_t)]
        resource: CrdResource,
    },
    /// Print the version.
    Version,
}

/// The custom resources, by their plural name.
#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum CrdResource {
    #[default]
    Kubeconfigrequests,
    Kubeconfigrevocations,
}

/// jemalloc, not glibc's malloc: after a burst (thousands of requests created and deleted, a
/// re-list of every Secret) glibc kept the freed memory between the pages still live, so the
/// resident size stayed near its peak; jemalloc hands it back (bench/results.md, 2026-11-24).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (the symbol carries the crate's prefix). A background thread
/// returns pages to the kernel about a second after they are freed, also while the operator is
/// idle, as it is after a burst; two arenas rather than four per core, since each keeps its own
/// partly used pages. `tests/cli.rs` checks that the binary runs with them.
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: &[u8; 53] = b"background_thread:true,narenas:2,dirty_decay_ms:1000\0";

/// Exit code for a configuration the operator refuses to start with.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(start()),
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn start() -> ExitCode {
    match Cli::parse().command {
        Command::Crd { resource } => match kubeconfig_operator::yaml::to_string(&match resource {
            CrdResource::Kubeconfigrequests => crd::definition::<crd::KubeconfigRequest>(),
            CrdResource::Kubeconfigrevocations => crd::definition::<crd::KubeconfigRevocation>(),
        }) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("cannot render the CRD: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("kubeconfig-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run { config, log_format } => {
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            // The API server's file is part of the configuration: a bad one is refused the same
            // way, before any connection (the verifier reads it again, and then keeps watching).
            if let OidcSettings::AuthenticationConfig { path, strictness } = &config.oidc
                && let Err(problem) = authn_config::load(path, *strictness)
            {
                eprintln!("invalid configuration: oidc.authenticationConfig: {problem}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            telemetry::init(log_format);
            match run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // kube, reqwest and the HTTPS listener all use rustls; name its provider once for the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| anyhow::anyhow!("cannot configure the Kubernetes client: {e}"))?;
    let client = kube::Client::try_from(kube_config.clone())
        .map_err(|e| anyhow::anyhow!("cannot configure the Kubernetes client: {e}"))?;
    let metrics = Arc::new(Metrics::default());
    // Reviews go to the API server the operator talks to, without the operator's credentials.
    let confirmer = match config.confirm_with_api_server {
        true => Some(
            Confirmer::new(&kube_config, Arc::clone(&metrics))
                .map_err(|e| anyhow::anyhow!("cannot configure the confirming client: {e}"))?,
        ),
        false => None,
    };
    let verifier = Arc::new(match &config.oidc {
        OidcSettings::Flags(oidc) => Verifier::new(oidc.as_ref().clone()).await?,
        OidcSettings::AuthenticationConfig { path, strictness } => {
            Verifier::from_authentication_config(path, *strictness).await?
        }
    });
    tokio::spawn(Arc::clone(&verifier).keep_keys_fresh());
    tokio::spawn(
        Arc::clone(&verifier).watch_authentication_config(kubeconfig_operator::ca::POLL_INTERVAL),
    );
    let replica = Replica::find(
        client.clone(),
        config.leader_election.as_ref(),
        FIELD_MANAGER,
        leader::identity(),
    );
    if let (Some(edits), Some(replica)) = (verifier.refused_edits(), replica.clone()) {
        tokio::spawn(drift::report(edits, replica));
    }
    tokio::spawn(
        config
            .kubeconfig
            .ca
            .clone()
            .watch_file(kubeconfig_operator::ca::POLL_INTERVAL),
    );
    let controller_ready = Arc::new(AtomicBool::new(false));
    let ready_flag = Arc::clone(&controller_ready);

    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop.send(true);
    });
    let on_stop = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };

    let revocations = Revocations::follow(client.clone()).await;
    let authenticator = Arc::new(Authenticator::new(
        verifier,
        revocations,
        Arc::clone(&metrics),
    ));
    let audit = Arc::new(
        AuditLog::open(&config.audit)
            .map_err(|e| anyhow::anyhow!("audit.path: cannot open the audit stream: {e}"))?,
    );
    let context = Arc::new(
        Context::new(
            client.clone(),
            Arc::clone(&authenticator),
            config.kubeconfig.clone(),
            config.api_server_kubeconfig.clone(),
            config.controller.clone(),
            Arc::clone(&metrics),
            confirmer.clone(),
        )
        .with_audit(Arc::clone(&audit)),
    );
    // The configuration refuses a page without oidc.issuerUrl: it logs in at that one issuer.
    let console = match (config.console.clone(), &config.oidc) {
        (Some(page), OidcSettings::Flags(oidc)) => Some(Arc::new(
            Console::new(
                page,
                oidc,
                Arc::clone(&authenticator),
                config.kubeconfig.clone(),
                confirmer.clone(),
            )
            .await?
            .with_audit(Arc::clone(&audit)),
        )),
        _ => None,
    };
    let proxy = match &config.proxy {
        Some(proxy) => Some(
            BoundProxy::bind(
                proxy,
                Arc::clone(&authenticator),
                Arc::clone(&metrics),
                client.clone(),
                replica,
            )
            .await?,
        ),
        None => None,
    };
    let http_state = Arc::new(HttpState {
        authenticator,
        settings: config.kubeconfig.clone(),
        metrics,
        controller_ready: Arc::clone(&controller_ready),
        allowed_origins: config.http.allowed_origins.clone(),
        confirmer,
        console,
        audit,
    });
    info!(listen = %config.http.listen, tls = config.http.tls.is_some(), oidc = ?config.oidc, confirm_with_api_server = config.confirm_with_api_server, "starting");
    let controller = async {
        if !config.controller.enabled {
            info!("controller.enabled is false: serving without reconciling");
            controller_ready.store(true, Ordering::Relaxed);
            return;
        }
        match &config.leader_election {
            // Every replica serves HTTP; only the Lease's holder runs the controller.
            Some(settings) => {
                let elector = leader::Elector::new(client, settings, leader::identity());
                let watch_namespace = config.watch_namespace.clone();
                leader::run(elector, on_stop(), controller_ready, move |stop| {
                    let (context, ready) = (Arc::clone(&context), Arc::clone(&ready_flag));
                    let watch_namespace = watch_namespace.clone();
                    async move {
                        controller::run(context, watch_namespace.as_deref(), ready, stop).await;
                    }
                })
                .await;
            }
            None => {
                controller::run(
                    context,
                    config.watch_namespace.as_deref(),
                    controller_ready,
                    on_stop(),
                )
                .await
            }
        }
    };
    // A listener that cannot bind ends the process: the controller alone never ends, and a
    // replica without HTTP would stay unready with no word of why.
    tokio::try_join!(
        async {
            controller.await;
            Ok(())
        },
        server::serve(&config.http, http_state, on_stop()),
        async {
            if let Some(proxy) = proxy {
                proxy.serve(on_stop()).await;
            }
            Ok(())
        },
    )?;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
