//! Schema agreement after DDL, on the driver's behalf.
//!
//! After a schema change a driver waits until every node reports the same `schema_version`
//! (comparing `system.local` with `system.peers`) before it sends more requests; otherwise a
//! write can reach a node that does not know the new table yet. Through the proxy the driver
//! sees no peers, so it cannot wait: the relay holds a RESULT of kind SCHEMA_CHANGE until the
//! upstream's nodes agree, asked over a connection of the proxy's own, at most
//! [`SCHEMA_AGREEMENT_TIMEOUT`] (the drivers' own default limit).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use dbproxy_cassandra::schema::{query_frame, schema_versions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CassandraService, login::own_startup};
use crate::{session::Attempt, upstream::Connector};

/// How long a DDL result may be held while the upstream's nodes converge.
pub const SCHEMA_AGREEMENT_TIMEOUT: Duration = Duration::from_secs(10);

impl<C: Connector> CassandraService<C> {
    /// Waits (at most [`SCHEMA_AGREEMENT_TIMEOUT`]) until every upstream node reports the same
    /// schema version.
    pub(crate) async fn wait_schema_agreement(&self) {
        let started = Instant::now();
        match tokio::time::timeout(SCHEMA_AGREEMENT_TIMEOUT, self.poll_schema_versions()).await {
            Ok(Ok(polls)) => tracing::debug!(
                polls,
                waited_ms = started.elapsed().as_millis() as u64,
                "upstream schema in agreement"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not check the upstream's schema agreement after DDL")
            }
            Err(_) => tracing::warn!(
                "the upstream's nodes did not agree on the schema within {} s after DDL",
                SCHEMA_AGREEMENT_TIMEOUT.as_secs()
            ),
        }
    }

    async fn poll_schema_versions(&self) -> Result<u32, String> {
        let password = self
            .credential
            .password()
            .await
            .map_err(|e| e.to_string())?;
        let version = self.max_version.min(4);
        let startup = own_startup(version);
        let mut up = match self
            .attempt(&startup, password)
            .await
            .map_err(|e| e.message)?
        {
            Attempt::LoggedIn(up) => up,
            Attempt::Refused(r) => return Err(format!("login refused: {}", r.summary)),
        };
        let (mut dec, mut enc) = up.login.into_codec();
        let mut polls = 0;
        loop {
            polls += 1;
            let mut versions = Vec::new();
            for (stream, cql) in [
                (1, "SELECT schema_version FROM system.local"),
                (2, "SELECT schema_version FROM system.peers"),
            ] {
                let mut out = BytesMut::new();
                enc.encode(&query_frame(version, stream, cql), &mut out);
                up.stream.write_all(&out).await.map_err(|e| e.to_string())?;
                let frame = loop {
                    if let Some(f) = dec.decode(&mut up.buf).map_err(|e| e.to_string())? {
                        break f;
                    }
                    if up
                        .stream
                        .read_buf(&mut up.buf)
                        .await
                        .map_err(|e| e.to_string())?
                        == 0
                    {
                        return Err("the upstream closed the connection".into());
                    }
                };
                versions.extend(schema_versions(&frame).map_err(|e| e.to_string())?);
            }
            if versions.windows(2).all(|w| w[0] == w[1]) {
                let _ = up.stream.shutdown().await;
                return Ok(polls);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
