//! The `entra-db-proxy` binary: glue only ("not meant as a library").
//!
//! # Layout
//! - [`config`]: one validated [`config::Config`] from the TOML file, the flags (every option
//!   also has an `ENTRA_DB_PROXY_*` variable) and Service Connector's environment variables.
//! - [`app`]: builds credentials and listeners from the config and runs them until a signal.

mod app;
mod config;
mod logging;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let flags = config::Flags::parse();
    if let Err(e) = logging::init(flags.log_format) {
        eprintln!("entra-db-proxy: {e:#}");
        return ExitCode::from(2);
    }
    dbproxy_tls::install_crypto_provider();
    let env = config::EnvSnapshot::from_process();
    let config = match config::Config::load(&flags, &env) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {e:#}");
            eprintln!("entra-db-proxy: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
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
        Some(config::flags::Command::Check) => runtime.block_on(app::check(config, env)),
        None => runtime.block_on(app::run(config, env)).map(|()| true),
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
