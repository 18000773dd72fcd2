//! The `herald` binary: the command line, logging, signals and the runtime around
//! [`herald_node::run`].

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use herald_node::config::{self, Config};
use herald_node::Listeners;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "herald", version, about = "A Pusher-protocol real-time server")]
struct Cli {
    /// TOML configuration file (also HERALD_CONFIG).
    #[arg(long, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a configuration file and exit (non-zero with the bad key named).
    CheckConfig {
        /// The file to check (default: --config).
        file: Option<PathBuf>,
    },
    /// Create the apps table of a database apps store ([apps_store]) if it is missing, and
    /// import the file's [[apps]] it does not have yet. Idempotent.
    Migrate,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        let path = file.clone().or(cli.config.clone());
        return match config::load(path.as_deref()) {
            Ok(c) => {
                let apps = if c.apps_store.is_database() {
                    format!(
                        "apps in {} table {}",
                        c.apps_store.driver, c.apps_store.table
                    )
                } else {
                    format!("{} app(s)", c.apps.len())
                };
                println!(
                    "configuration OK: {apps}, listen {}, bus {}",
                    c.server.listen, c.bus.driver
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("configuration error: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::Migrate) = &cli.command {
        return migrate(&config);
    }
    init_tracing(&config);
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listeners = Listeners::bind(&config)?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        herald_node::run(config, listeners, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "herald stopped");
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `herald migrate`: one run on a small runtime, the outcome on stdout or stderr.
fn migrate(config: &Config) -> std::process::ExitCode {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(herald_node::apps_store::migrate(config)));
    match outcome {
        Ok(done) => {
            println!("{done}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald migrate: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    herald_node::drain::wait_for_signal().await;
    shutdown.cancel();
}

/// Text for people on a terminal, JSON for machines; no colour codes in files or pipes.
fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let terminal = std::io::stdout().is_terminal();
    let json = match config.log.format.as_str() {
        "json" => true,
        "text" => false,
        _ => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(terminal);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Every connection is a file descriptor: take the hard limit, not the usual soft 1024.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}
