//! Integration tests: the real `entra-db-proxy` binary (and, in `in_process.rs`, the library) against a real PostgreSQL (TLS on,
//! `password` authentication like Azure, plus SCRAM and MD5 variants) and fakes of Azure's
//! identity endpoints, driven by the clients people run (psql, pgbench, psycopg2,
//! tokio-postgres). See `util.rs` for how the binary is run and `stack.rs` for the fixture.

mod stack;
mod util;

/// The Cassandra path against a real Cassandra 5.0 (1 and 3 nodes).
mod cassandra;
/// The seed's Cassandra samples (Python cassandra-driver, DataStax Java driver 4.x) through the proxy.
mod cassandra_drivers;
/// The command line: --help, configuration errors, Service Connector variables, signals.
mod cli;
/// psql, pgbench, tokio-postgres and psycopg2 through the proxy, with no password anywhere.
mod clients;
/// Each credential kind end to end, and the default chain.
mod credentials;
/// PostgreSQL 17's direct TLS (sslnegotiation=direct) with libpq 17, ALPN, non-UTF-8 startup values.
mod direct_tls;
/// What clients see when something fails, and that one client's garbage hurts no other.
mod failures;
/// Faults: token endpoints and IMDS that hang, ARM throttling, an upstream that never answers
/// or does not resolve, databases restarted under live sessions.
mod faults;
/// Hostile clients: a table of cases per protocol (bad lengths, versions, negotiations,
/// half-open and slow sockets, storms, random bytes, v5 segments…) against one proxy each,
/// compared with the real server where it answers; log forgery; refusals in a loop.
mod hostile;
/// The proxy as a library, in process, stopped by a future.
mod in_process;
/// Probes, metrics, connection cap, `check`, idle timeout, shutdown.
mod ops;
/// Per-pod identity (DaemonSet mode): pods told apart by source IP, each logging in as its own
/// workload identity; refusals; the Kubernetes API down; uid allowlists on Unix sockets.
mod pod_identity;
/// No secret in a full trace-level log.
mod secrets;
/// Token lifetime: refresh, expiry mid-run, rejection and retry, large tokens.
mod tokens;
/// Warm upstream sessions: isolation between clients, the greeting a cold login shows, the
/// cold path for what cannot be exact, cancel, a restart under warm sessions.
mod warm;
