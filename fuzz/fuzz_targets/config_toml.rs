//! The configuration file: arbitrary text written to a temporary file and loaded with
//! `Config::load` (`--config FILE`, an empty environment): TOML parsing, the serde types and
//! the validation of every listener.
#![no_main]

use clap::Parser;
use entra_db_proxy::{Config, EnvSnapshot, Flags};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("entra-db-proxy-fuzz-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).unwrap();
    let flags =
        Flags::try_parse_from(["entra-db-proxy", "--config", path.to_str().unwrap()]).unwrap();
    let _ = Config::load(&flags, &EnvSnapshot::default());
});
