//! The `entra-db-proxy` binary: glue around the library (see `lib.rs`). It parses the
//! command line, installs logging, loads the configuration, and is the only place that listens
//! to signals: the first SIGTERM/SIGINT starts the graceful shutdown, a second one skips its
//! waiting.

mod allocator;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use entra_db_proxy::{Config, EnvSnapshot, Flags, config::flags::Command, logging};

fn main() -> ExitCode {
    let flags = Flags::parse();
    if let Err(e) = logging::init(flags.log_format) {
        eprintln!("entra-db-proxy: {e:#}");
        return ExitCode::from(2);
    }
    dbproxy_tls::install_crypto_provider();
    let config = match Config::load(&flags, &EnvSnapshot::from_process()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {e:#}");
            eprintln!("entra-db-proxy: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    entra_db_proxy::limits::raise_open_files(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("entra-db-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match flags.command {
        Some(Command::Check) => runtime.block_on(entra_db_proxy::check(config)),
        None => runtime.block_on(serve(config)).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("entra-db-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the proxy with the signals as its shutdown (installed before anything starts, so a
/// signal during start-up is not lost).
async fn serve(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install signal handlers")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install signal handlers")?;
    let (first_tx, first) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        for (n, tx) in [first_tx, second_tx].into_iter().enumerate() {
            let signal = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            match n {
                0 => tracing::info!(signal, "signal received"),
                _ => tracing::warn!(signal, "second signal; exiting now"),
            }
            let _ = tx.send(());
        }
    });
    let first = async {
        let _ = first.await;
    };
    let second = async {
        let _ = second.await;
    };
    entra_db_proxy::run_with_abort(config, first, second).await
}
