//! Cosmos DB settings: detection, the explicit switch, the retry budget, token mode's scope.

use super::*;
use clap::Parser;

fn load(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Config> {
    let mut v = vec!["entra-db-proxy"];
    v.extend_from_slice(args);
    Config::load(
        &Flags::try_parse_from(v).unwrap(),
        &EnvSnapshot::from_pairs(env.iter().copied()),
    )
}

fn cql(c: &Config) -> &CassandraSettings {
    c.listeners[0].cassandra.as_ref().unwrap()
}

const SC: [(&str, &str); 4] = [
    (
        "AZURE_COSMOS_CONTACTPOINT",
        "acct.cassandra.cosmos.azure.com",
    ),
    ("AZURE_COSMOS_USERNAME", "acct"),
    (
        "AZURE_COSMOS_LISTKEYURL",
        "https://management.azure.com/x/listKeys",
    ),
    (
        "AZURE_COSMOS_SCOPE",
        "https://management.azure.com/.default",
    ),
];

#[test]
fn cosmos_hosts_get_cosmos_behaviour_and_the_default_retry_budget() {
    let c = load(&[], &SC).unwrap();
    let s = cql(&c);
    assert!(s.cosmos);
    assert_eq!(s.max_protocol_version, 4);
    assert!(s.compression.is_empty());
    assert_eq!(
        s.cosmos_retry,
        Some(dbproxy_cassandra::cosmos::RetryPolicy::default())
    );
    // Off explicitly; or a budget of one's own.
    let c = load(&["--cassandra-cosmos-retry", "false"], &SC).unwrap();
    assert_eq!(cql(&c).cosmos_retry, None);
    let c = load(
        &[
            "--cassandra-cosmos-max-retries",
            "2",
            "--cassandra-cosmos-max-retry-wait",
            "800ms",
        ],
        &SC,
    )
    .unwrap();
    let p = cql(&c).cosmos_retry.unwrap();
    assert_eq!((p.max_retries, p.max_wait), (2, Duration::from_millis(800)));
}

#[test]
fn the_explicit_switch_makes_any_host_cosmos() {
    let mut env = SC;
    env[0].1 = "127.0.0.1";
    let c = load(&[], &env).unwrap();
    assert!(!cql(&c).cosmos);
    assert_eq!(cql(&c).cosmos_retry, None);
    assert_eq!(cql(&c).max_protocol_version, 5);
    let e = load(&["--cassandra-cosmos-max-retries", "3"], &env).unwrap_err();
    assert!(format!("{e:#}").contains("only for Cosmos DB"), "{e:#}");
    let c = load(&["--cassandra-cosmos", "true"], &env).unwrap();
    assert!(cql(&c).cosmos && cql(&c).cosmos_retry.is_some());
    assert_eq!(cql(&c).max_protocol_version, 4, "Cosmos speaks v4 only");
    assert!(cql(&c).compression.is_empty(), "Cosmos refuses compression");
}

#[test]
fn token_mode_uses_the_cosmos_scope_not_service_connectors_arm_scope() {
    let c = load(&["--cassandra-password", "token"], &SC).unwrap();
    assert_eq!(c.listeners[0].scope, COSMOS_SCOPE);
    assert_eq!(c.listeners[0].user, "acct");
    assert!(matches!(cql(&c).password, CassandraPassword::Token));
    // --scope wins.
    let c = load(
        &[
            "--cassandra-password",
            "token",
            "--scope",
            "https://other.example/.default",
        ],
        &SC,
    )
    .unwrap();
    assert_eq!(c.listeners[0].scope, "https://other.example/.default");
}
