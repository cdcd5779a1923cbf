//! Unit tests of the warm-session settings: file keys, flags and variables, defaults, bounds.

use std::time::Duration;

use clap::Parser;

use super::*;

fn flags(args: &[&str]) -> Flags {
    let mut v = vec!["entra-db-proxy"];
    v.extend_from_slice(args);
    Flags::try_parse_from(v).unwrap()
}

fn file(text: &str) -> anyhow::Result<Config> {
    let dir = std::env::temp_dir().join(format!("edp-warm-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{:x}.toml", text.len()));
    std::fs::write(&p, text).unwrap();
    Config::load(
        &flags(&["--config", p.to_str().unwrap()]),
        &EnvSnapshot::default(),
    )
}

const PG: &str = "[[listener]]\nprotocol = \"postgres\"\nupstream = \"db\"\nuser = \"u\"\n";

#[test]
fn off_by_default_with_a_five_minute_max_age() {
    let c = file(PG).unwrap();
    assert_eq!(c.listeners[0].warm_sessions, 0);
    assert_eq!(
        c.listeners[0].warm_session_max_age,
        Duration::from_secs(300)
    );
}

#[test]
fn file_keys() {
    let c = file(&format!(
        "{PG}warm_sessions = 4\nwarm_session_max_age = \"90s\"\n"
    ))
    .unwrap();
    assert_eq!(c.listeners[0].warm_sessions, 4);
    assert_eq!(c.listeners[0].warm_session_max_age, Duration::from_secs(90));

    let e = file(&format!("{PG}warm_sessions = 5000\n")).unwrap_err();
    assert!(
        format!("{e:#}").contains("warm_sessions: expected 0 to 1000"),
        "{e:#}"
    );
    let e = file(&format!("{PG}warm_session_max_age = \"10ms\"\n")).unwrap_err();
    assert!(
        format!("{e:#}").contains("warm_session_max_age: expected at least 1s"),
        "{e:#}"
    );
    let cql = "[[listener]]\nprotocol = \"cassandra\"\nupstream = \"c\"\nuser = \"u\"\npassword = \"token\"\nscope = \"s\"\nwarm_sessions = 1\n";
    let e = file(cql).unwrap_err();
    assert!(
        format!("{e:#}").contains("only for protocol = \"postgres\""),
        "{e:#}"
    );
}

#[test]
fn flags_and_variables() {
    let base = ["--postgres-upstream", "db", "--postgres-user", "u"];
    let mut args = base.to_vec();
    args.extend([
        "--postgres-warm-sessions",
        "3",
        "--postgres-warm-session-max-age",
        "2m",
    ]);
    let c = Config::load(&flags(&args), &EnvSnapshot::default()).unwrap();
    assert_eq!(c.listeners[0].warm_sessions, 3);
    assert_eq!(
        c.listeners[0].warm_session_max_age,
        Duration::from_secs(120)
    );

    let e = Config::load(
        &flags(&[&base[..], &["--postgres-warm-session-max-age", "0"]].concat()),
        &EnvSnapshot::default(),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("--postgres-warm-session-max-age"),
        "{e:#}"
    );
}
