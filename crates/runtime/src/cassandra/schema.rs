//! Schema agreement after DDL, on the driver's behalf.
//!
//! After a schema change a driver waits until every node reports the same `schema_version`
//! (comparing `system.local` with `system.peers`) before it sends more requests; otherwise a
//! write can reach a node that does not know the new table yet. Through the proxy the driver
//! sees no peers, so it cannot wait: the relay holds a RESULT of kind SCHEMA_CHANGE until the
//! upstream's nodes agree, at most [`SCHEMA_AGREEMENT_TIMEOUT`] (the drivers' own default
//! limit). Only that RESULT waits: the session's other streams go on.
//!
//! The versions are asked over one control connection per listener ([`SchemaControl`]),
//! logged in once, kept open, and opened again after a failure; never a login per DDL.
//! Concurrent DDLs on a listener take turns on it. Cosmos DB's request-rate limit (an
//! Overloaded "Request rate is large") applies to these queries too: the poll waits as told
//! and asks again, and what they are charged counts in the listener's request units.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dbproxy_cassandra::{
    BodyCompression, FrameDecoder, FrameEncoder,
    cosmos::{rate_limit, request_charge},
    schema::{query_frame, schema_versions},
};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{CassandraService, login::own_startup};
use crate::{session::Attempt, upstream::Connector};

/// How long a DDL result may be held while the upstream's nodes converge.
pub const SCHEMA_AGREEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the versions are asked while they differ.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The largest ERROR body looked into for a rate limit on the control connection.
const MAX_CONTROL_BODY: usize = 64 * 1024;

/// Any connected upstream stream.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A listener's control connection for schema agreement (none until the first DDL).
#[derive(Default)]
pub struct SchemaControl {
    conn: tokio::sync::Mutex<Option<Control>>,
}

/// A logged-in control connection.
struct Control {
    stream: Box<dyn Io>,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    buf: BytesMut,
    version: u8,
    /// A Cosmos listener's request-unit counter: these queries are charged too.
    request_units: Option<Counter<f64, AtomicU64>>,
}

impl<C: Connector> CassandraService<C> {
    /// Waits (at most [`SCHEMA_AGREEMENT_TIMEOUT`]) until every upstream node reports the same
    /// schema version.
    pub(crate) async fn wait_schema_agreement(&self) {
        let started = Instant::now();
        match tokio::time::timeout(SCHEMA_AGREEMENT_TIMEOUT, self.agree()).await {
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

    /// Polls over the control connection, opening it first if needed and once more if it
    /// failed (the upstream may have closed an idle one). The connection is taken out while in
    /// use and put back only after a complete poll, so one cut short by the timeout is closed
    /// rather than reused with an answer still in flight.
    async fn agree(&self) -> Result<u32, String> {
        let mut conn = self.schema.conn.lock().await;
        let mut reopened = false;
        loop {
            let mut control = match conn.take() {
                Some(c) => c,
                None => {
                    reopened = true;
                    self.open_control().await?
                }
            };
            match control.poll().await {
                Ok(polls) => {
                    *conn = Some(control);
                    return Ok(polls);
                }
                Err(e) if reopened => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "schema control connection failed; opening another")
                }
            }
        }
    }

    async fn open_control(&self) -> Result<Control, String> {
        let password = self
            .credential
            .password()
            .await
            .map_err(|e| e.to_string())?;
        let version = self.max_version.min(4);
        let startup = own_startup(version);
        match self
            .attempt(&startup, password)
            .await
            .map_err(|e| e.message)?
        {
            Attempt::LoggedIn(up) => {
                let (decoder, encoder) = up.login.into_codec();
                Ok(Control {
                    stream: Box::new(up.stream),
                    decoder,
                    encoder,
                    buf: up.buf,
                    version,
                    request_units: self
                        .cosmos
                        .as_ref()
                        .map(|c| c.metrics.request_units.clone()),
                })
            }
            Attempt::Refused(r) => Err(format!("login refused: {}", r.summary)),
        }
    }
}

impl Control {
    /// Asks `system.local` and `system.peers` for their schema versions until they agree.
    async fn poll(&mut self) -> Result<u32, String> {
        let mut polls = 0;
        'poll: loop {
            polls += 1;
            let mut versions = Vec::new();
            for (stream, cql) in [
                (1, "SELECT schema_version FROM system.local"),
                (2, "SELECT schema_version FROM system.peers"),
            ] {
                let mut out = BytesMut::new();
                self.encoder
                    .encode(&query_frame(self.version, stream, cql), &mut out);
                self.stream
                    .write_all(&out)
                    .await
                    .map_err(|e| e.to_string())?;
                let frame = loop {
                    match self.decoder.decode(&mut self.buf) {
                        Ok(Some(f)) if f.header.stream == stream => {
                            if let Some(ru) = &self.request_units
                                && let Some(charge) = request_charge(&f.header, &f.body)
                            {
                                ru.inc_by(charge);
                            }
                            break f;
                        }
                        // Not an answer to this query (an event): skip it.
                        Ok(Some(_)) => continue,
                        Ok(None) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                    let n = self.stream.read_buf(&mut self.buf).await;
                    if n.map_err(|e| e.to_string())? == 0 {
                        return Err("the upstream closed the connection".into());
                    }
                };
                // Cosmos's request-rate limit applies to these queries too: wait as told (at
                // most a poll interval more) and ask again; the overall timeout still bounds it.
                if let Some(wait) = rate_limit(&frame, BodyCompression::None, MAX_CONTROL_BODY) {
                    let wait = wait.unwrap_or(POLL_INTERVAL).min(POLL_INTERVAL * 5);
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "schema version query throttled; asking again"
                    );
                    tokio::time::sleep(wait).await;
                    continue 'poll;
                }
                versions.extend(schema_versions(&frame).map_err(|e| e.to_string())?);
            }
            if versions.windows(2).all(|w| w[0] == w[1]) {
                return Ok(polls);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
