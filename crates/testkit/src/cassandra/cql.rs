//! The driver side: scylla sessions to one node over TLS (verified against the test CA), and the
//! superuser's admin work through node 1: any CQL, waiting for schema agreement across the
//! nodes, and login roles with passwords (key rotation).

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use scylla::{
    client::{session::Session, session_builder::SessionBuilder},
    policies::host_filter::AllowListHostFilter,
};

use super::{CassandraCluster, SUPERUSER};

impl CassandraCluster {
    /// A scylla session builder for node `n` (1-based) only: TLS verified against the test CA
    /// (including the IP SAN), no schema metadata fetch, no other node used. Add `.user(..)`.
    ///
    /// # Panics
    /// If there is no node `n`.
    pub fn session_builder(&self, n: usize) -> SessionBuilder {
        let addr = self.node_addr(n);
        SessionBuilder::new()
            .known_node_addr(addr)
            .tls_context(Some(self.tls.clone()))
            .host_filter(Arc::new(
                AllowListHostFilter::new([addr]).expect("a socket address resolves to itself"),
            ))
            .fetch_schema_metadata(false)
            .connection_timeout(Duration::from_secs(10))
    }

    /// A session through node 1 as the superuser.
    pub async fn admin_session(&self) -> anyhow::Result<Session> {
        self.session_builder(1)
            .user(SUPERUSER.0, SUPERUSER.1)
            .build()
            .await
            .context("superuser session through node 1")
    }

    /// Runs one CQL statement as the superuser over TLS through node 1.
    pub async fn admin_query(&self, cql: &str) -> anyhow::Result<()> {
        let session = self.admin_session().await?;
        session
            .query_unpaged(cql, &[])
            .await
            .with_context(|| format!("CQL as superuser: {cql}"))?;
        drop(session);
        self.wait_schema_agreement().await
    }

    /// Waits until every node reports node 1's schema version (as node 1 sees them in
    /// `system.peers`). A session from [`CassandraCluster::session_builder`] knows only one node,
    /// so the driver's own schema agreement wait covers only that node: call this after DDL
    /// before writing through a 3-node cluster ([`CassandraCluster::admin_query`] does).
    pub async fn wait_schema_agreement(&self) -> anyhow::Result<()> {
        if self.nodes.len() == 1 {
            return Ok(());
        }
        let session = self.admin_session().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut versions = HashSet::new();
            for cql in [
                "SELECT CAST(schema_version AS text) FROM system.local",
                "SELECT CAST(schema_version AS text) FROM system.peers",
            ] {
                let rows = session
                    .query_unpaged(cql, &[])
                    .await
                    .with_context(|| cql.to_string())?
                    .into_rows_result()
                    .with_context(|| cql.to_string())?;
                for row in rows.rows::<(Option<String>,)>().context("schema_version")? {
                    versions.insert(row.context("schema_version")?.0);
                }
            }
            if versions.len() == 1 && !versions.contains(&None) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no schema agreement after 60 s: {versions:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a login role with this password, or sets the password of the existing role
    /// (never a superuser; with the authorizer on, it gets ALL PERMISSIONS ON ALL KEYSPACES).
    /// The password is never logged nor put in an error.
    pub async fn set_role_password(&self, role: &str, password: &str) -> anyhow::Result<()> {
        let session = self.admin_session().await?;
        let r = role.replace('"', "\"\"");
        let p = password.replace('\'', "''");
        let exists = session
            .query_unpaged("SELECT role FROM system_auth.roles WHERE role = ?", (role,))
            .await
            .context("reading system_auth.roles")?
            .into_rows_result()
            .context("system_auth.roles rows")?
            .rows_num()
            > 0;
        let cql = if exists {
            format!("ALTER ROLE \"{r}\" WITH PASSWORD = '{p}' AND LOGIN = true")
        } else {
            format!(
                "CREATE ROLE IF NOT EXISTS \"{r}\" WITH PASSWORD = '{p}' AND LOGIN = true AND SUPERUSER = false"
            )
        };
        if let Err(e) = session.query_unpaged(cql, &[]).await {
            let msg = e.to_string().replace(password, "<redacted>");
            bail!("setting the password of role {role:?}: {msg}");
        }
        if self.authorizer {
            session
                .query_unpaged(
                    format!("GRANT ALL PERMISSIONS ON ALL KEYSPACES TO \"{r}\""),
                    &[],
                )
                .await
                .with_context(|| format!("granting permissions to {role:?}"))?;
        }
        Ok(())
    }
}
