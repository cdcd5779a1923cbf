//! The configuration file: arbitrary text (lossily UTF-8) loaded with `Config::from_text`,
//! the path `Config::load` takes once it has read `--config FILE` (no flags, an empty
//! environment): TOML parsing, the serde types and the validation of every listener.
#![no_main]

use clap::Parser;
use entra_db_proxy::{Config, EnvSnapshot, Flags};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fn flags() -> &'static Flags {
    static FLAGS: OnceLock<Flags> = OnceLock::new();
    FLAGS.get_or_init(|| Flags::try_parse_from(["entra-db-proxy"]).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let file = Some((Path::new("fuzz.toml"), &*text));
    let _ = Config::from_text(flags(), &EnvSnapshot::default(), file);
});
