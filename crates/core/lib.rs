//! `entra-db-proxy` as a library: everything the binary does except reading the process's
//! arguments and environment and listening to signals, so that the proxy can run in process
//! (tests, embedding) and be stopped by a future.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use clap::Parser;
//! use entra_db_proxy::{Config, EnvSnapshot, Flags};
//!
//! let flags = Flags::parse_from(["entra-db-proxy", "--postgres-upstream", "srv", "--postgres-user", "app"]);
//! let config = Config::load(&flags, &EnvSnapshot::from_process())?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let proxy = tokio::spawn(entra_db_proxy::run(config, async { let _ = stopped.await; }));
//! // … later: readiness off, stop accepting, drain, return.
//! let _ = stop.send(());
//! proxy.await??;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: one validated [`Config`] from the TOML file, the flags (every option also has
//!   an `ENTRA_DB_PROXY_*` variable) and Service Connector's environment variables.
//! - [`Proxy`], [`run`], [`check`] (in `app.rs`): credentials and listeners built from the
//!   config, run until a shutdown future resolves.
//! - `identity.rs`: listeners that check who connects (per-pod identity, uid allowlists).
//! - [`logging`]: the `tracing` subscriber the binary installs; [`limits`]: the open-file
//!   limit raised at start.

mod app;
pub mod config;
mod identity;
pub mod limits;
pub mod logging;

pub use app::{Proxy, check, run, run_with_abort};
pub use config::{Config, EnvSnapshot, Flags};
