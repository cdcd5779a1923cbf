//! Test support for entra-db-proxy.
//!
//! Tests cannot reach Azure, so they run the real things locally and fake only what must be
//! faked, byte for byte:
//!
//! # Layout
//! * [`certs`]: a per-test CA ([`certs::TestCa`]) for server certificates, and the RSA client
//!   certificate of a service principal ([`certs::client_rsa_cert`]).
//! * [`postgres`]: a real PostgreSQL per test ([`postgres::PgServer`]) with TLS and
//!   cleartext-password logins like Azure Database for PostgreSQL, plus a tokio-postgres TLS
//!   adapter.
//! * [`tokens`]: JWT-shaped access tokens of a chosen length.
//! * [`azure`]: [`azure::FakeAzure`], one server that answers as IMDS, App Service managed
//!   identity, the Entra ID v2 token endpoint, the `az` CLI (through a fake `az` script) and
//!   ARM's Cosmos DB listKeys.
//! * [`kubernetes`]: [`kubernetes::FakeKube`], the Kubernetes API of per-pod identity (pods by
//!   node with watch, service accounts, TokenRequest signed by a test issuer).
//! * [`cosmos`]: [`cosmos::CosmosStandin`], Cosmos DB for Apache Cassandra's behaviour (v4 only,
//!   no compression, request-rate throttling, request charges, Entra RBAC logins) in front of
//!   the real Cassandra.
//! * [`util`]: temp dirs, free ports, the `postgres` system user.
//!
//! Every server binds 127.0.0.1 on a free port and owns a unique temp dir, so tests run in
//! parallel; everything is torn down on drop (`KEEP_TEST_DIRS=1` keeps the dirs).

pub mod azure;
pub mod cassandra;
pub mod certs;
pub mod cosmos;
pub mod kubernetes;
pub mod postgres;
pub mod tokens;
pub mod util;
