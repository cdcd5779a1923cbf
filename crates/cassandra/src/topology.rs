//! Hiding the upstream's topology from the driver.
//!
//! A CQL driver learns the cluster from `system.local` (the node it is connected to) and
//! `system.peers` / `system.peers_v2` (every other node), then dials the addresses it found
//! there, and it follows TOPOLOGY_CHANGE / STATUS_CHANGE events. Behind this proxy the driver
//! must only ever dial the proxy, so per client connection [`TopologyRewriter`]:
//!
//! * answers `system.local` with the proxy's listen address in `rpc_address`,
//!   `broadcast_address`, `listen_address` (and `native_address`), the listen port in
//!   `rpc_port`, `native_port`, `native_transport_port`, `broadcast_port`, `listen_port`, a
//!   host id stable per listener, `tokens` owning the whole ring (one token), and
//!   `data_center` / `rack` overridden if configured;
//! * answers `system.peers` and `system.peers_v2` with no rows (the column metadata stays, so
//!   drivers parse the result as usual);
//! * drops TOPOLOGY_CHANGE and STATUS_CHANGE events (SCHEMA_CHANGE passes);
//! * does the same for those queries sent as PREPARE + EXECUTE: the prepared ids are
//!   remembered in a [`PreparedStatements`] registry (share one per listener, since drivers
//!   prepare on one connection and execute on another), and with `skip_metadata` the rows are
//!   read with the column specs the PREPARE's result metadata announced.
//!
//! Only QUERY, PREPARE and EXECUTE request bodies, RESULT bodies of remembered streams (their
//! metadata walked by a bounds-checked reader) and EVENT bodies are decoded; every other frame is relayed on its header alone.
//!
//! # Layouts
//!
//! ```text
//! QUERY    [long string query][query parameters]
//! PREPARE  [long string query](v5: [int flags][keyspace])
//! EXECUTE  [short bytes id](v5: [short bytes result_metadata_id])[query parameters]
//! request body prefix:   [bytes map custom payload] if flag 0x04
//! response body prefix:  [uuid tracing id] if 0x02, [string list warnings] if 0x08,
//!                        [bytes map custom payload] if 0x04 — kept verbatim on rewrite
//! RESULT   [int kind] 2 = Rows: <metadata>[int rows_count] rows_count × columns × [bytes]
//!                     4 = Prepared: [short bytes id](v5: [short bytes])<prep. metadata><result metadata>
//! EVENT    [string type] TOPOLOGY_CHANGE | STATUS_CHANGE | SCHEMA_CHANGE …
//! ```
//!
//! A rewritten RESULT keeps the original header (version, flags, stream), the body prefix and
//! the rows metadata byte for byte; only the row count and the rows change, and the body is
//! recompressed if the frame was compressed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::error::CqlError;
use crate::frame::{BodyCompression, Frame, flags, opcode};
use crate::result::{self, Column, type_id};
use crate::wire::Reader;

/// The lowest Murmur3 token: as the only token of the only node, it owns the whole ring.
pub const MURMUR3_RING_TOKEN: &str = "-9223372036854775808";
/// The token given with RandomPartitioner.
pub const RANDOM_RING_TOKEN: &str = "0";
/// Longer queries are never taken for system-table queries (they are not worth scanning).
pub const MAX_CLASSIFIED_QUERY_LEN: usize = 16 * 1024;
/// How many prepared system-table statements a registry remembers.
pub const MAX_PREPARED: usize = 1024;

/// What the driver must see instead of the upstream's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The proxy's listen address, shown in the address columns (an unspecified IP such as
    /// 0.0.0.0 is shown as the loopback address) and, its port, in the port columns.
    pub listen: SocketAddr,
    /// The host id shown for the single node; keep it stable per listener.
    pub host_id: Uuid,
    /// Replaces `data_center` (e.g. `datacenter1` for a driver configured with that local DC).
    pub data_center: Option<String>,
    /// Replaces `rack`.
    pub rack: Option<String>,
}

impl Topology {
    fn ip(&self) -> IpAddr {
        match self.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        }
    }
}

/// The system tables that describe the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemTable {
    /// `system.local`
    Local,
    /// `system.peers`
    Peers,
    /// `system.peers_v2`
    PeersV2,
}

/// Recognises a SELECT from `system.local`, `system.peers` or `system.peers_v2`, tolerating
/// case, whitespace, quoting (`"system"."local"`) and any column list or
/// WHERE clause.
pub fn classify_query(query: &str) -> Option<SystemTable> {
    let trimmed = query.trim_start();
    // Cheap checks first: every QUERY frame passes through here.
    if trimmed.len() > MAX_CLASSIFIED_QUERY_LEN
        || !trimmed
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("select"))
    {
        return None;
    }
    let lower = trimmed.to_ascii_lowercase();
    let mut tokens: Vec<&str> = Vec::new();
    let bytes = lower.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphanumeric() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push(&lower[start..i]);
            continue;
        }
        match c {
            b'"' | b' ' | b'\t' | b'\r' | b'\n' => {}
            b'.' => tokens.push("."),
            // Any other punctuation ends a name; keep a marker so `from` must be followed by
            // the table name itself.
            _ => tokens.push("?"),
        }
        i += 1;
    }
    if tokens.first() != Some(&"select") {
        return None;
    }
    let from = tokens.iter().position(|t| *t == "from")?;
    match tokens.get(from + 1..from + 4)? {
        ["system", ".", table] => {
            if tokens.get(from + 4) == Some(&".") {
                return None;
            }
            match *table {
                "local" => Some(SystemTable::Local),
                "peers" => Some(SystemTable::Peers),
                "peers_v2" => Some(SystemTable::PeersV2),
                _ => None,
            }
        }
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct PreparedSystem {
    table: SystemTable,
    /// The result metadata's column specs, for EXECUTE responses sent with NO_METADATA.
    col_specs: Vec<Column>,
}

/// The prepared ids of system-table queries, shared by the connections of one listener
/// (cheap to clone; bounded to [`MAX_PREPARED`] entries).
#[derive(Debug, Clone, Default)]
pub struct PreparedStatements {
    inner: Arc<Mutex<HashMap<Bytes, PreparedSystem>>>,
}

impl PreparedStatements {
    /// An empty registry.
    pub fn new() -> Self {
        PreparedStatements::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, PreparedSystem>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, id: &[u8]) -> Option<PreparedSystem> {
        self.lock().get(id).cloned()
    }

    fn insert(&self, id: Bytes, prepared: PreparedSystem) {
        let mut map = self.lock();
        if map.len() >= MAX_PREPARED && !map.contains_key(&id) {
            // Drivers prepare a handful of system queries; a full registry means ids churn,
            // so starting over loses little.
            map.clear();
        }
        map.insert(id, prepared);
    }

    /// Longer queries are never taken for system-table queries (they are not worth scanning).
    pub const MAX_CLASSIFIED_QUERY_LEN: usize = 16 * 1024;
    /// How many prepared system-table statements are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What to do with a client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Relay it upstream unchanged.
    Forward,
    /// Do not relay it; send this answer to the client instead.
    Reply(Frame),
}

/// What to do with an upstream frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAction {
    /// Relay this frame (the original or its rewrite) to the client.
    Forward(Frame),
    /// Swallow it.
    Drop,
}

#[derive(Debug, Clone)]
enum Pending {
    Query(SystemTable),
    Prepare(SystemTable),
    Execute(SystemTable, Bytes),
}

/// Per client connection: tracks system-table requests and rewrites their results.
#[derive(Debug)]
pub struct TopologyRewriter {
    topology: Topology,
    prepared: PreparedStatements,
    pending: HashMap<i16, Pending>,
    /// Bound on a body once decompressed.
    max_body_len: usize,
}

impl TopologyRewriter {
    /// A rewriter with a registry of its own.
    pub fn new(topology: Topology) -> Self {
        Self::with_prepared(topology, PreparedStatements::new())
    }

    /// A rewriter sharing `prepared` with the listener's other connections.
    pub fn with_prepared(topology: Topology, prepared: PreparedStatements) -> Self {
        TopologyRewriter {
            topology,
            prepared,
            pending: HashMap::new(),
            max_body_len: crate::frame::DEFAULT_MAX_FRAME_SIZE,
        }
    }

    /// Bounds the bodies this rewriter decompresses (default
    /// [`crate::frame::DEFAULT_MAX_FRAME_SIZE`]); a compressed body announcing more is refused
    /// before it is decompressed.
    pub fn with_max_body_len(mut self, max_body_len: usize) -> Self {
        self.max_body_len = max_body_len;
        self
    }

    /// The topology shown.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A frame from the client, after READY. Only QUERY, PREPARE and EXECUTE bodies are read;
    /// a body that cannot be read is relayed anyway (the upstream answers it with an error),
    /// except a compressed one announcing more than the bound ([`CqlError::BodyTooLarge`]),
    /// which is an error here.
    pub fn on_client_frame(
        &mut self,
        frame: &Frame,
        compression: BodyCompression,
    ) -> Result<ClientAction, CqlError> {
        if frame.header.response {
            return Ok(ClientAction::Forward);
        }
        let stream = frame.header.stream;
        let tracked = match frame.header.opcode {
            opcode::QUERY | opcode::PREPARE | opcode::EXECUTE => {
                match self.classify_request(frame, compression) {
                    Err(e @ CqlError::BodyTooLarge { .. }) => return Err(e),
                    r => r.ok().flatten(),
                }
            }
            _ => None,
        };
        match tracked {
            Some(pending) => {
                self.pending.insert(stream, pending);
            }
            None => {
                self.pending.remove(&stream);
            }
        }
        Ok(ClientAction::Forward)
    }

    fn classify_request(
        &self,
        frame: &Frame,
        compression: BodyCompression,
    ) -> Result<Option<Pending>, CqlError> {
        let body = frame.plain_body(compression, self.max_body_len)?;
        let mut r = Reader::new(&body, "request body");
        if frame.header.flags & flags::CUSTOM_PAYLOAD != 0 {
            r.skip_bytes_map()?;
        }
        Ok(match frame.header.opcode {
            opcode::QUERY => classify_query(r.long_string()?).map(Pending::Query),
            opcode::PREPARE => classify_query(r.long_string()?).map(Pending::Prepare),
            _ => {
                let id = r.short_bytes()?;
                self.prepared
                    .get(id)
                    .map(|p| Pending::Execute(p.table, Bytes::copy_from_slice(id)))
            }
        })
    }

    /// A frame from the upstream: events about upstream nodes are dropped, results of
    /// system-table requests rewritten, everything else relayed unchanged.
    pub fn on_upstream_frame(
        &mut self,
        frame: Frame,
        compression: BodyCompression,
    ) -> Result<UpstreamAction, CqlError> {
        let h = frame.header;
        if h.opcode == opcode::EVENT {
            return Ok(
                if is_topology_event(&frame, compression, self.max_body_len) {
                    UpstreamAction::Drop
                } else {
                    UpstreamAction::Forward(frame)
                },
            );
        }
        if h.stream < 0 {
            return Ok(UpstreamAction::Forward(frame));
        }
        let Some(pending) = self.pending.remove(&h.stream) else {
            return Ok(UpstreamAction::Forward(frame));
        };
        if h.opcode != opcode::RESULT {
            return Ok(UpstreamAction::Forward(frame));
        }
        let body = frame.plain_body(compression, self.max_body_len)?;
        let prefix = response_prefix_len(&body, h.flags)?;
        let mut r = Reader::new(&body[prefix..], "RESULT body");
        let kind = r.int()?;
        match (pending, kind) {
            (Pending::Prepare(table), 4) => {
                let (id, col_specs) = result::read_prepared(&mut r, h.version)?;
                self.prepared
                    .insert(Bytes::from(id), PreparedSystem { table, col_specs });
                Ok(UpstreamAction::Forward(frame))
            }
            (Pending::Query(table), 2) => {
                self.rewrite_rows(frame, &body, prefix, table, None, compression)
            }
            (Pending::Execute(table, id), 2) => {
                let prepared = self.prepared.get(&id);
                self.rewrite_rows(
                    frame,
                    &body,
                    prefix,
                    table,
                    prepared.map(|p| p.col_specs),
                    compression,
                )
            }
            _ => Ok(UpstreamAction::Forward(frame)),
        }
    }

    fn rewrite_rows(
        &self,
        frame: Frame,
        body: &[u8],
        prefix: usize,
        table: SystemTable,
        prepared_specs: Option<Vec<Column>>,
        compression: BodyCompression,
    ) -> Result<UpstreamAction, CqlError> {
        let result = &body[prefix..];
        let mut r = Reader::new(result, "RESULT Rows");
        r.skip(4)?; // kind
        let metadata = result::read_rows_metadata(&mut r)?;
        let rows_start = r.position();
        let columns = metadata.columns_count;

        let mut out = BytesMut::with_capacity(body.len() + 64);
        out.put_slice(&body[..prefix + rows_start]);
        match table {
            SystemTable::Peers | SystemTable::PeersV2 => {
                out.put_i32(0);
            }
            SystemTable::Local => {
                let specs = if metadata.no_metadata {
                    match prepared_specs {
                        Some(specs) if specs.len() == columns => specs,
                        _ => {
                            return Err(CqlError::malformed(
                                "RESULT Rows",
                                "system.local rows without metadata for an unknown statement",
                            ));
                        }
                    }
                } else {
                    metadata.columns
                };
                let mut r = Reader::new(&result[rows_start..], "RESULT Rows content");
                let count = r.int()?;
                let count = usize::try_from(count)
                    .map_err(|_| CqlError::malformed("RESULT Rows", "negative row count"))?;
                out.put_i32(count as i32);
                // Rows of no columns carry no bytes: nothing to rewrite, however many the count
                // claims (looping over 2^31 empty rows would stall the relay for seconds).
                let count = if columns == 0 { 0 } else { count };
                let mut row: Vec<Option<&[u8]>> = Vec::with_capacity(columns.min(1024));
                for _ in 0..count {
                    row.clear();
                    for _ in 0..columns {
                        row.push(r.bytes()?);
                    }
                    self.rewrite_local_row(&specs, &row, &mut out);
                }
            }
        }
        let mut new_body = out.freeze();
        if frame.is_compressed() {
            new_body = compression.compress(&new_body)?;
        }
        let mut header = frame.header;
        header.body_len = new_body.len() as u32;
        Ok(UpstreamAction::Forward(Frame {
            header,
            body: new_body,
        }))
    }

    /// Writes one system.local row with the topology's values in place.
    fn rewrite_local_row(&self, specs: &[Column], row: &[Option<&[u8]>], out: &mut BytesMut) {
        let partitioner = specs
            .iter()
            .position(|s| s.name.eq_ignore_ascii_case("partitioner"))
            .and_then(|i| row.get(i).copied().flatten())
            .and_then(|v| std::str::from_utf8(v).ok());
        for (spec, value) in specs.iter().zip(row) {
            match self.local_value(spec, *value, partitioner) {
                Some(new) => crate::wire::put_bytes(out, Some(&new)),
                None => crate::wire::put_bytes(out, *value),
            }
        }
    }

    /// The replacement for one system.local cell, `None` to keep it.
    fn local_value(
        &self,
        spec: &Column,
        value: Option<&[u8]>,
        partitioner: Option<&str>,
    ) -> Option<Vec<u8>> {
        let t = &self.topology;
        let ty = spec.ty.id;
        match spec.name.to_ascii_lowercase().as_str() {
            "rpc_address" | "broadcast_address" | "listen_address" | "native_address"
                if ty == type_id::INET =>
            {
                Some(match t.ip() {
                    IpAddr::V4(ip) => ip.octets().to_vec(),
                    IpAddr::V6(ip) => ip.octets().to_vec(),
                })
            }
            "rpc_port"
            | "native_port"
            | "native_transport_port"
            | "broadcast_port"
            | "listen_port"
                if ty == type_id::INT =>
            {
                Some(i32::from(t.listen.port()).to_be_bytes().to_vec())
            }
            "host_id" if matches!(ty, type_id::UUID | type_id::TIMEUUID) => {
                Some(t.host_id.as_bytes().to_vec())
            }
            "data_center" if is_text(ty) => t.data_center.as_ref().map(|s| s.as_bytes().to_vec()),
            "rack" if is_text(ty) => t.rack.as_ref().map(|s| s.as_bytes().to_vec()),
            "tokens" if is_text_set(spec) => {
                ring_token(partitioner, value).map(|token| encode_text_set(&[token]))
            }
            _ => None,
        }
    }
}

fn is_text(ty: u16) -> bool {
    matches!(ty, type_id::VARCHAR | type_id::ASCII)
}

fn is_text_set(spec: &Column) -> bool {
    spec.ty.id == type_id::SET
        && matches!(spec.ty.elements.as_slice(), [inner] if is_text(inner.id))
}

/// `set<text>` value (v3+): `[int n]` then n × `[int len][bytes]`.
fn encode_text_set(items: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(items.len() as i32).to_be_bytes());
    for item in items {
        out.extend_from_slice(&(item.len() as i32).to_be_bytes());
        out.extend_from_slice(item.as_bytes());
    }
    out
}

fn decode_text_set(value: &[u8]) -> Option<Vec<&str>> {
    let mut r = Reader::new(value, "set<text>");
    let n = r.int().ok()?;
    (0..n)
        .map(|_| {
            r.bytes()
                .ok()
                .flatten()
                .and_then(|b| std::str::from_utf8(b).ok())
        })
        .collect()
}

/// The single token that makes one node own the ring for this partitioner; `None` keeps the
/// upstream's tokens (order-preserving partitioners, unreadable values). Without a
/// `partitioner` column the upstream tokens' format decides.
fn ring_token(partitioner: Option<&str>, tokens: Option<&[u8]>) -> Option<&'static str> {
    match partitioner {
        Some(p) if p.ends_with("Murmur3Partitioner") => Some(MURMUR3_RING_TOKEN),
        Some(p) if p.ends_with("RandomPartitioner") => Some(RANDOM_RING_TOKEN),
        Some(_) => None,
        None => {
            let tokens = decode_text_set(tokens?)?;
            if tokens.is_empty() {
                None
            } else if tokens.iter().all(|t| t.parse::<i64>().is_ok()) {
                Some(MURMUR3_RING_TOKEN)
            } else if tokens.iter().all(|t| t.parse::<u128>().is_ok()) {
                Some(RANDOM_RING_TOKEN)
            } else {
                None
            }
        }
    }
}

/// Length of the response body prefix: tracing id, warnings, custom payload.
pub fn response_prefix_len(body: &[u8], frame_flags: u8) -> Result<usize, CqlError> {
    let mut r = Reader::new(body, "response body prefix");
    if frame_flags & flags::TRACING != 0 {
        r.skip(16)?;
    }
    if frame_flags & flags::WARNING != 0 {
        r.string_list()?;
    }
    if frame_flags & flags::CUSTOM_PAYLOAD != 0 {
        r.skip_bytes_map()?;
    }
    Ok(r.position())
}

/// True for TOPOLOGY_CHANGE and STATUS_CHANGE events (and for unreadable events: an EVENT
/// the proxy cannot read is not worth the risk of pointing the driver at an upstream host).
fn is_topology_event(frame: &Frame, compression: BodyCompression, max: usize) -> bool {
    let Ok(body) = frame.plain_body(compression, max) else {
        return true;
    };
    let Ok(prefix) = response_prefix_len(&body, frame.header.flags) else {
        return true;
    };
    match Reader::new(&body[prefix..], "EVENT body").string() {
        Ok(kind) => kind == "TOPOLOGY_CHANGE" || kind == "STATUS_CHANGE",
        Err(_) => true,
    }
}

#[path = "topology_large.rs"]
mod large;

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
