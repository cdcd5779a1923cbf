//! Tests for the topology rewriter, with results built by cassandra-protocol.

use super::*;
use bytes::BufMut;
use cassandra_protocol::frame::message_result::{
    BodyResResultPrepared, BodyResResultRows, ColSpec, ColType, ColTypeOption, ColTypeOptionValue,
    PreparedMetadata, ResResultBody, RowsMetadata, RowsMetadataFlags, TableSpec,
};
use cassandra_protocol::frame::{Serialize, Version};
use cassandra_protocol::types::{CBytes, CBytesShort};
use std::io::Cursor;

const UPSTREAM_IP: [u8; 4] = [10, 1, 2, 3];

fn topology() -> Topology {
    Topology {
        listen: "127.0.0.1:9042".parse().unwrap(),
        host_id: Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
        data_center: Some("datacenter1".into()),
        rack: None,
    }
}

fn ty(id: ColType) -> ColTypeOption {
    ColTypeOption { id, value: None }
}

fn spec(name: &str, col_type: ColTypeOption) -> ColSpec {
    ColSpec {
        table_spec: None,
        name: name.into(),
        col_type,
    }
}

fn text_set() -> ColTypeOption {
    ColTypeOption {
        id: ColType::Set,
        value: Some(ColTypeOptionValue::CSet(Box::new(ty(ColType::Varchar)))),
    }
}

fn local_specs() -> Vec<ColSpec> {
    vec![
        spec("key", ty(ColType::Varchar)),
        spec("bootstrapped", ty(ColType::Varchar)),
        spec("broadcast_address", ty(ColType::Inet)),
        spec("cluster_name", ty(ColType::Varchar)),
        spec("data_center", ty(ColType::Varchar)),
        spec("host_id", ty(ColType::Uuid)),
        spec("listen_address", ty(ColType::Inet)),
        spec("partitioner", ty(ColType::Varchar)),
        spec("rack", ty(ColType::Varchar)),
        spec("release_version", ty(ColType::Varchar)),
        spec("rpc_address", ty(ColType::Inet)),
        spec("rpc_port", ty(ColType::Int)),
        spec("tokens", text_set()),
    ]
}

fn text(s: &str) -> CBytes {
    CBytes::new(s.as_bytes().to_vec())
}

fn local_row() -> Vec<CBytes> {
    vec![
        text("local"),
        text("COMPLETED"),
        CBytes::new(UPSTREAM_IP.to_vec()),
        text("cosmos"),
        text("West US"),
        CBytes::new(vec![0xaa; 16]),
        CBytes::new(UPSTREAM_IP.to_vec()),
        text("org.apache.cassandra.dht.Murmur3Partitioner"),
        text("rack1"),
        text("3.11.0"),
        CBytes::new_null(),
        CBytes::new(10350i32.to_be_bytes().to_vec()),
        CBytes::new(encode_text_set(&[
            "-3074457345618258603",
            "3074457345618258602",
        ])),
    ]
}

fn peers_specs(v2: bool) -> Vec<ColSpec> {
    let mut specs = vec![
        spec("peer", ty(ColType::Inet)),
        spec("data_center", ty(ColType::Varchar)),
        spec("host_id", ty(ColType::Uuid)),
        spec("rack", ty(ColType::Varchar)),
        spec("rpc_address", ty(ColType::Inet)),
        spec("tokens", text_set()),
    ];
    if v2 {
        specs.push(spec("native_port", ty(ColType::Int)));
    }
    specs
}

fn rows_metadata(table: &str, specs: Vec<ColSpec>) -> RowsMetadata {
    RowsMetadata {
        flags: RowsMetadataFlags::GLOBAL_TABLE_SPACE,
        columns_count: specs.len() as i32,
        paging_state: None,
        new_metadata_id: None,
        global_table_spec: Some(TableSpec {
            ks_name: "system".into(),
            table_name: table.into(),
        }),
        col_specs: specs,
    }
}

fn rows_body(metadata: RowsMetadata, rows: Vec<Vec<CBytes>>) -> Vec<u8> {
    ResResultBody::Rows(BodyResResultRows {
        metadata,
        rows_count: rows.len() as i32,
        rows_content: rows,
        protocol_version: Version::V4,
    })
    .serialize_to_vec(Version::V4)
}

fn result(stream: i16, frame_flags: u8, body: impl Into<Bytes>) -> Frame {
    Frame::new(4, true, frame_flags, stream, opcode::RESULT, body)
}

/// QUERY body: [long string][consistency ONE][flags] (v4 flags are one byte).
fn query(stream: i16, q: &str, query_flags: u8) -> Frame {
    let mut body = BytesMut::new();
    body.put_i32(q.len() as i32);
    body.put_slice(q.as_bytes());
    body.put_u16(0x0001);
    body.put_u8(query_flags);
    Frame::new(4, false, 0, stream, opcode::QUERY, body.freeze())
}

fn prepare(stream: i16, q: &str) -> Frame {
    let mut body = BytesMut::new();
    body.put_i32(q.len() as i32);
    body.put_slice(q.as_bytes());
    Frame::new(4, false, 0, stream, opcode::PREPARE, body.freeze())
}

/// EXECUTE body: [short bytes id][consistency][flags 0x02 skip_metadata].
fn execute(stream: i16, id: &[u8]) -> Frame {
    let mut body = BytesMut::new();
    body.put_u16(id.len() as u16);
    body.put_slice(id);
    body.put_u16(0x0001);
    body.put_u8(0x02);
    Frame::new(4, false, 0, stream, opcode::EXECUTE, body.freeze())
}

fn parse_rows(body: &[u8]) -> BodyResResultRows {
    match ResResultBody::from_cursor(&mut Cursor::new(body), Version::V4).unwrap() {
        ResResultBody::Rows(rows) => rows,
        other => panic!("expected rows, got {other:?}"),
    }
}

fn forwarded(action: UpstreamAction) -> Frame {
    match action {
        UpstreamAction::Forward(f) => f,
        UpstreamAction::Drop => panic!("dropped"),
    }
}

fn cell<'a>(rows: &'a BodyResResultRows, specs: &[ColSpec], name: &str) -> Option<&'a [u8]> {
    let i = specs.iter().position(|s| s.name == name).unwrap();
    rows.rows_content[0][i].as_slice()
}

fn assert_local_rewritten(rows: &BodyResResultRows, specs: &[ColSpec]) {
    assert_eq!(rows.rows_count, 1);
    assert_eq!(cell(rows, specs, "rpc_address"), Some(&[127, 0, 0, 1][..]));
    assert_eq!(
        cell(rows, specs, "broadcast_address"),
        Some(&[127, 0, 0, 1][..])
    );
    assert_eq!(
        cell(rows, specs, "listen_address"),
        Some(&[127, 0, 0, 1][..])
    );
    assert_eq!(
        cell(rows, specs, "rpc_port"),
        Some(&9042i32.to_be_bytes()[..])
    );
    assert_eq!(
        cell(rows, specs, "host_id"),
        Some(topology().host_id.as_bytes().as_slice())
    );
    assert_eq!(cell(rows, specs, "data_center"), Some(&b"datacenter1"[..]));
    // not overridden: kept
    assert_eq!(cell(rows, specs, "rack"), Some(&b"rack1"[..]));
    assert_eq!(cell(rows, specs, "cluster_name"), Some(&b"cosmos"[..]));
    assert_eq!(
        cell(rows, specs, "tokens"),
        Some(&encode_text_set(&[MURMUR3_RING_TOKEN])[..])
    );
}

#[test]
fn system_local_is_rewritten() {
    let mut rw = TopologyRewriter::new(topology());
    let q = query(5, "SELECT * FROM system.local WHERE key='local'", 0);
    assert_eq!(
        rw.on_client_frame(&q, BodyCompression::None).unwrap(),
        ClientAction::Forward
    );
    let upstream = result(
        5,
        0,
        rows_body(rows_metadata("local", local_specs()), vec![local_row()]),
    );
    let out = forwarded(
        rw.on_upstream_frame(upstream.clone(), BodyCompression::None)
            .unwrap(),
    );
    assert_eq!(
        (out.header.version, out.header.stream, out.header.flags),
        (4, 5, 0)
    );
    assert_eq!(out.header.body_len as usize, out.body.len());
    let rows = parse_rows(&out.body);
    assert_eq!(rows.metadata, parse_rows(&upstream.body).metadata);
    assert_local_rewritten(&rows, &local_specs());

    // The stream is forgotten once answered: a later result on it passes untouched.
    let again = forwarded(
        rw.on_upstream_frame(upstream.clone(), BodyCompression::None)
            .unwrap(),
    );
    assert_eq!(again, upstream);
}

#[test]
fn tokens_follow_the_upstream_format_without_a_partitioner_column() {
    let specs = vec![
        spec("host_id", ty(ColType::Uuid)),
        spec("tokens", text_set()),
    ];
    let mut rw = TopologyRewriter::new(topology());
    rw.on_client_frame(
        &query(1, "select host_id, tokens from system.local", 0),
        BodyCompression::None,
    )
    .unwrap();
    let row = vec![
        CBytes::new_null(),
        CBytes::new(encode_text_set(&["17", "-42"])),
    ];
    let upstream = result(
        1,
        0,
        rows_body(rows_metadata("local", specs.clone()), vec![row]),
    );
    let rows = parse_rows(
        &forwarded(
            rw.on_upstream_frame(upstream, BodyCompression::None)
                .unwrap(),
        )
        .body,
    );
    assert_eq!(
        rows.rows_content[0][0].as_slice(),
        Some(topology().host_id.as_bytes().as_slice())
    );
    assert_eq!(
        rows.rows_content[0][1].as_slice(),
        Some(&encode_text_set(&[MURMUR3_RING_TOKEN])[..])
    );
}

#[test]
fn system_peers_has_no_rows_but_keeps_its_metadata() {
    for (table, q, v2) in [
        (
            "peers",
            "select peer, data_center, host_id, rack, rpc_address, tokens from system.peers",
            false,
        ),
        ("peers_v2", "SELECT * FROM system.peers_v2", true),
    ] {
        let mut rw = TopologyRewriter::new(topology());
        rw.on_client_frame(&query(9, q, 0), BodyCompression::None)
            .unwrap();
        let peer_row = |ip: u8| {
            let mut row = vec![
                CBytes::new(vec![10, 0, 0, ip]),
                text("East US"),
                CBytes::new(vec![ip; 16]),
                text("rack1"),
                CBytes::new(vec![10, 0, 0, ip]),
                CBytes::new(encode_text_set(&["0"])),
            ];
            if v2 {
                row.push(CBytes::new(10350i32.to_be_bytes().to_vec()));
            }
            row
        };
        let upstream = result(
            9,
            0,
            rows_body(
                rows_metadata(table, peers_specs(v2)),
                vec![peer_row(4), peer_row(5)],
            ),
        );
        let out = forwarded(
            rw.on_upstream_frame(upstream, BodyCompression::None)
                .unwrap(),
        );
        let rows = parse_rows(&out.body);
        assert_eq!(rows.rows_count, 0);
        assert!(rows.rows_content.is_empty());
        assert_eq!(rows.metadata, rows_metadata(table, peers_specs(v2)));
    }
}

#[test]
fn tracing_warnings_and_custom_payload_are_kept() {
    let mut rw = TopologyRewriter::new(topology());
    rw.on_client_frame(
        &query(2, "SELECT * FROM system.peers", 0),
        BodyCompression::None,
    )
    .unwrap();
    let mut body = BytesMut::new();
    body.put_slice(&[0x11; 16]); // tracing id
    body.put_u16(1); // one warning
    crate::wire::put_string(&mut body, "careful");
    body.put_u16(1); // custom payload: one entry
    crate::wire::put_string(&mut body, "k");
    crate::wire::put_bytes(&mut body, Some(b"v"));
    let prefix = body.len();
    body.put_slice(&rows_body(
        rows_metadata("peers", peers_specs(false)),
        vec![vec![CBytes::new_null(); 6]],
    ));
    let frame_flags = flags::TRACING | flags::WARNING | flags::CUSTOM_PAYLOAD;
    let upstream = result(2, frame_flags, body.freeze());
    let out = forwarded(
        rw.on_upstream_frame(upstream.clone(), BodyCompression::None)
            .unwrap(),
    );
    assert_eq!(out.header.flags, frame_flags);
    assert_eq!(out.body[..prefix], upstream.body[..prefix]);
    assert_eq!(parse_rows(&out.body[prefix..]).rows_count, 0);
}

#[test]
fn prepare_then_execute_with_skip_metadata() {
    let registry = PreparedStatements::new();
    let mut rw = TopologyRewriter::with_prepared(topology(), registry.clone());
    let id = b"\x01\x02\x03\x04prepared-local";
    rw.on_client_frame(
        &prepare(3, "SELECT * FROM \"system\".\"local\" WHERE key = ?"),
        BodyCompression::None,
    )
    .unwrap();
    let prepared = ResResultBody::Prepared(BodyResResultPrepared {
        id: CBytesShort::new(id.to_vec()),
        result_metadata_id: None,
        metadata: PreparedMetadata {
            pk_indexes: vec![0],
            global_table_spec: Some(TableSpec {
                ks_name: "system".into(),
                table_name: "local".into(),
            }),
            col_specs: vec![spec("key", ty(ColType::Varchar))],
        },
        result_metadata: rows_metadata("local", local_specs()),
    })
    .serialize_to_vec(Version::V4);
    let upstream = result(3, 0, prepared);
    assert_eq!(
        forwarded(
            rw.on_upstream_frame(upstream.clone(), BodyCompression::None)
                .unwrap()
        ),
        upstream
    );
    assert_eq!(registry.len(), 1);

    // EXECUTE on another connection of the same listener, with skip_metadata: the rows come
    // with NO_METADATA and are read with the prepared result metadata.
    let mut other = TopologyRewriter::with_prepared(topology(), registry);
    other
        .on_client_frame(&execute(11, id), BodyCompression::None)
        .unwrap();
    let no_metadata = RowsMetadata {
        flags: RowsMetadataFlags::NO_METADATA,
        columns_count: local_specs().len() as i32,
        paging_state: None,
        new_metadata_id: None,
        global_table_spec: None,
        col_specs: vec![],
    };
    let upstream = result(11, 0, rows_body(no_metadata.clone(), vec![local_row()]));
    let out = forwarded(
        other
            .on_upstream_frame(upstream, BodyCompression::None)
            .unwrap(),
    );
    let rows = parse_rows(&out.body);
    assert_eq!(rows.metadata, no_metadata);
    assert_local_rewritten(&rows, &local_specs());
}

#[test]
fn execute_of_an_unknown_statement_is_untouched() {
    let mut rw = TopologyRewriter::new(topology());
    rw.on_client_frame(&execute(4, b"other"), BodyCompression::None)
        .unwrap();
    let upstream = result(
        4,
        0,
        rows_body(rows_metadata("local", local_specs()), vec![local_row()]),
    );
    assert_eq!(
        forwarded(
            rw.on_upstream_frame(upstream.clone(), BodyCompression::None)
                .unwrap()
        ),
        upstream
    );
}

fn event(kind: &str) -> Frame {
    let mut body = BytesMut::new();
    crate::wire::put_string(&mut body, kind);
    crate::wire::put_string(&mut body, "NEW_NODE");
    body.put_u8(4);
    body.put_slice(&UPSTREAM_IP);
    body.put_i32(10350);
    Frame::new(4, true, 0, -1, opcode::EVENT, body.freeze())
}

#[test]
fn topology_and_status_events_are_dropped() {
    let mut rw = TopologyRewriter::new(topology());
    for kind in ["TOPOLOGY_CHANGE", "STATUS_CHANGE"] {
        assert_eq!(
            rw.on_upstream_frame(event(kind), BodyCompression::None)
                .unwrap(),
            UpstreamAction::Drop
        );
    }
    let mut body = BytesMut::new();
    for s in ["SCHEMA_CHANGE", "CREATED", "KEYSPACE", "ks"] {
        crate::wire::put_string(&mut body, s);
    }
    let schema = Frame::new(4, true, 0, -1, opcode::EVENT, body.freeze());
    assert_eq!(
        rw.on_upstream_frame(schema.clone(), BodyCompression::None)
            .unwrap(),
        UpstreamAction::Forward(schema)
    );
}

#[test]
fn compressed_frames_round_trip() {
    for compression in [BodyCompression::Lz4, BodyCompression::Snappy] {
        let mut rw = TopologyRewriter::new(topology());
        let plain = query(6, "SELECT * FROM system.local WHERE key='local'", 0);
        let compressed_query = Frame::new(
            4,
            false,
            flags::COMPRESSION,
            6,
            opcode::QUERY,
            compression.compress(&plain.body).unwrap(),
        );
        rw.on_client_frame(&compressed_query, compression).unwrap();
        let body = rows_body(rows_metadata("local", local_specs()), vec![local_row()]);
        let upstream = result(6, flags::COMPRESSION, compression.compress(&body).unwrap());
        let out = forwarded(rw.on_upstream_frame(upstream, compression).unwrap());
        assert_eq!(out.header.flags, flags::COMPRESSION);
        assert_eq!(out.header.body_len as usize, out.body.len());
        let rows = parse_rows(&compression.decompress(&out.body).unwrap());
        assert_local_rewritten(&rows, &local_specs());

        // Compressed events are read too.
        let ev = event("TOPOLOGY_CHANGE");
        let ev = Frame::new(
            4,
            true,
            flags::COMPRESSION,
            -1,
            opcode::EVENT,
            compression.compress(&ev.body).unwrap(),
        );
        assert_eq!(
            rw.on_upstream_frame(ev, compression).unwrap(),
            UpstreamAction::Drop
        );
    }
}

#[test]
fn other_traffic_is_untouched_and_stream_reuse_forgets() {
    let mut rw = TopologyRewriter::new(topology());
    rw.on_client_frame(
        &query(1, "SELECT * FROM system.peers", 0),
        BodyCompression::None,
    )
    .unwrap();
    // The upstream answers with an error: forwarded, stream forgotten.
    let err = crate::messages::error_frame(4, 1, 0x2200, "unconfigured table peers");
    assert_eq!(
        rw.on_upstream_frame(err.clone(), BodyCompression::None)
            .unwrap(),
        UpstreamAction::Forward(err)
    );
    rw.on_client_frame(
        &query(1, "SELECT * FROM system.peers", 0),
        BodyCompression::None,
    )
    .unwrap();
    // The client reuses stream 1 for an ordinary query before... (it would not, but be safe)
    rw.on_client_frame(&query(1, "SELECT * FROM ks.t", 0), BodyCompression::None)
        .unwrap();
    let upstream = result(
        1,
        0,
        rows_body(
            rows_metadata("peers", peers_specs(false)),
            vec![vec![CBytes::new_null(); 6]],
        ),
    );
    assert_eq!(
        forwarded(
            rw.on_upstream_frame(upstream.clone(), BodyCompression::None)
                .unwrap()
        ),
        upstream
    );
    // Unparseable client bodies are relayed.
    let junk = Frame::new(4, false, 0, 2, opcode::QUERY, Bytes::from_static(b"\xff"));
    assert_eq!(
        rw.on_client_frame(&junk, BodyCompression::None).unwrap(),
        ClientAction::Forward
    );
}

#[test]
fn malformed_result_of_a_tracked_stream_is_an_error() {
    let mut rw = TopologyRewriter::new(topology());
    rw.on_client_frame(
        &query(1, "SELECT * FROM system.local", 0),
        BodyCompression::None,
    )
    .unwrap();
    let upstream = result(1, 0, Bytes::from_static(b"\x00\x00\x00\x02\x00\x00"));
    assert!(
        rw.on_upstream_frame(upstream, BodyCompression::None)
            .is_err()
    );
}

#[test]
fn rows_of_no_columns_are_relayed_as_they_are_whatever_their_count() {
    // A RESULT Rows of zero columns claiming 2^31 - 1 rows: no cells to rewrite, so the
    // frame goes on unchanged at once (the fuzzer's cql_topology timeout: the rewriter used to
    // loop over every empty row, seconds of CPU per frame).
    let mut rw = TopologyRewriter::new(topology());
    rw.on_client_frame(
        &query(1, "SELECT * FROM system.local", 0),
        BodyCompression::None,
    )
    .unwrap();
    let mut body = BytesMut::new();
    body.put_i32(2); // Rows
    body.put_i32(0x0001); // global table spec
    body.put_i32(0); // no columns
    crate::wire::put_string(&mut body, "system");
    crate::wire::put_string(&mut body, "local");
    body.put_i32(i32::MAX); // rows
    let body = body.freeze();
    let out = forwarded(
        rw.on_upstream_frame(result(1, 0, body.clone()), BodyCompression::None)
            .unwrap(),
    );
    assert_eq!(out.body, body);
}

#[test]
fn unspecified_listen_address_shows_loopback() {
    let t = Topology {
        listen: "0.0.0.0:9042".parse().unwrap(),
        ..topology()
    };
    assert_eq!(t.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn queries_are_recognised_tolerantly() {
    use SystemTable::*;
    for (q, expected) in [
        ("SELECT * FROM system.local WHERE key='local'", Some(Local)),
        (
            "select peer, data_center, rack, rpc_address from system.peers",
            Some(Peers),
        ),
        ("SELECT * FROM system.peers_v2", Some(PeersV2)),
        ("  select *\n\tfrom   SYSTEM . LOCAL ;", Some(Local)),
        ("SELECT * FROM \"system\".\"peers\"", Some(Peers)),
        (
            "SELECT schema_version FROM system.local WHERE key='local'",
            Some(Local),
        ),
        ("SELECT * FROM system.local_x", None),
        ("SELECT * FROM system_schema.tables", None),
        ("SELECT * FROM ks.local", None),
        ("INSERT INTO system.local (key) VALUES ('x')", None),
        ("SELECT * FROM local", None),
        ("select", None),
        ("", None),
    ] {
        assert_eq!(classify_query(q), expected, "{q}");
    }
}

#[test]
fn truncated_results_are_errors_not_panics() {
    let body = rows_body(rows_metadata("local", local_specs()), vec![local_row()]);
    for cut in 0..body.len() {
        let mut rw = TopologyRewriter::new(topology());
        rw.on_client_frame(
            &query(1, "SELECT * FROM system.local", 0),
            BodyCompression::None,
        )
        .unwrap();
        let upstream = result(1, 0, Bytes::copy_from_slice(&body[..cut]));
        assert!(
            rw.on_upstream_frame(upstream, BodyCompression::None)
                .is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn v5_prepared_result_is_read() {
    let id = b"v5-peers";
    let prepared = ResResultBody::Prepared(BodyResResultPrepared {
        id: CBytesShort::new(id.to_vec()),
        result_metadata_id: Some(CBytesShort::new(b"meta".to_vec())),
        metadata: PreparedMetadata {
            pk_indexes: vec![],
            global_table_spec: None,
            col_specs: vec![],
        },
        result_metadata: rows_metadata("peers_v2", peers_specs(true)),
    })
    .serialize_to_vec(Version::V5);
    let mut rw = TopologyRewriter::new(topology());
    let mut p = prepare(1, "SELECT * FROM system.peers_v2");
    p.header.version = 5;
    rw.on_client_frame(&p, BodyCompression::None).unwrap();
    let mut upstream = result(1, 0, prepared);
    upstream.header.version = 5;
    rw.on_upstream_frame(upstream, BodyCompression::None)
        .unwrap();
    let mut e = execute(2, id);
    e.header.version = 5;
    rw.on_client_frame(&e, BodyCompression::None).unwrap();
    let rows = rows_body(
        rows_metadata("peers_v2", peers_specs(true)),
        vec![vec![CBytes::new_null(); 7]],
    );
    let out = forwarded(
        rw.on_upstream_frame(result(2, 0, rows), BodyCompression::None)
            .unwrap(),
    );
    assert_eq!(parse_rows(&out.body).rows_count, 0);
}

#[test]
fn a_compressed_request_announcing_more_than_the_bound_is_refused() {
    // A QUERY whose lz4 prefix announces 1 GiB: refused before decompressing, not relayed.
    let mut r = TopologyRewriter::new(topology()).with_max_body_len(1 << 20);
    let mut body = vec![0x40, 0, 0, 0];
    body.extend_from_slice(&[0x1f, 0, 1, 0]);
    let f = Frame::new(4, false, flags::COMPRESSION, 5, opcode::QUERY, body);
    match r.on_client_frame(&f, BodyCompression::Lz4) {
        Err(CqlError::BodyTooLarge { len, max, .. }) => assert_eq!((len, max), (1 << 30, 1 << 20)),
        other => panic!("expected BodyTooLarge, got {other:?}"),
    }
    // Garbage that merely fails to decompress is still relayed for the upstream to answer.
    let f = Frame::new(
        4,
        false,
        flags::COMPRESSION,
        5,
        opcode::QUERY,
        vec![0, 0, 0, 8, 1],
    );
    assert!(matches!(
        r.on_client_frame(&f, BodyCompression::Lz4),
        Ok(ClientAction::Forward)
    ));
}

/// The first bytes of `frame`'s body, as the relay offers them for a large frame.
fn prefix(frame: &Frame, n: usize) -> &[u8] {
    &frame.body[..n.min(frame.body.len())]
}

#[test]
fn large_requests_are_held_whole_only_when_they_may_concern_the_topology() {
    let registry = PreparedStatements::new();
    let mut rw = TopologyRewriter::with_prepared(topology(), registry.clone());
    let peers = query(1, "SELECT * FROM system.peers", 0);
    assert!(rw.request_needs_whole(&peers.header, prefix(&peers, 4096)));

    // A big INSERT is relayed as it arrives, and whatever was pending on its stream is
    // forgotten (the stream now carries another request).
    rw.on_client_frame(&peers, BodyCompression::None).unwrap();
    let insert = query(
        1,
        &format!(
            "INSERT INTO ks.t (k, v) VALUES (1, '{}')",
            "x".repeat(100_000)
        ),
        0,
    );
    assert!(!rw.request_needs_whole(&insert.header, prefix(&insert, 65_536)));
    let rows = result(
        1,
        0,
        rows_body(rows_metadata("peers", peers_specs(false)), vec![]),
    );
    assert!(!rw.response_needs_whole(&rows.header, prefix(&rows, 65_536)));

    // A query text longer than the classifier ever reads is not a system-table query.
    let long = format!(
        "SELECT * FROM system.peers /* {} */",
        "y".repeat(MAX_CLASSIFIED_QUERY_LEN)
    );
    let long = query(2, &long, 0);
    assert!(!rw.request_needs_whole(&long.header, prefix(&long, 1024)));

    // Compressed: the first bytes cannot tell.
    let mut compressed = insert.clone();
    compressed.header.flags |= flags::COMPRESSION;
    assert!(rw.request_needs_whole(&compressed.header, prefix(&compressed, 65_536)));
    // Cut inside the custom payload: cannot tell either.
    let mut custom = insert.clone();
    custom.header.flags |= flags::CUSTOM_PAYLOAD;
    assert!(rw.request_needs_whole(&custom.header, &[0, 1, 0, 200, b'k']));

    // EXECUTE: held whole only for a prepared system-table statement.
    let id = b"prepared-peers";
    registry.insert(
        Bytes::from_static(id),
        PreparedSystem {
            table: SystemTable::Peers,
            col_specs: vec![],
        },
    );
    let exec = execute(3, id);
    assert!(rw.request_needs_whole(&exec.header, &exec.body));
    let other = execute(3, b"another");
    assert!(!rw.request_needs_whole(&other.header, &other.body));
    // Anything else (a BATCH, REGISTER…) is relayed as it arrives.
    let batch = Frame::new(4, false, 0, 5, opcode::BATCH, vec![0u8; 70_000]);
    assert!(!rw.request_needs_whole(&batch.header, prefix(&batch, 65_536)));
}

#[test]
fn large_responses_are_held_whole_for_pending_streams_events_and_schema_changes() {
    let mut rw = TopologyRewriter::new(topology());
    rw.on_client_frame(
        &query(7, "SELECT * FROM system.local", 0),
        BodyCompression::None,
    )
    .unwrap();
    let rows = result(
        7,
        0,
        rows_body(rows_metadata("local", local_specs()), vec![local_row()]),
    );
    assert!(rw.response_needs_whole(&rows.header, &rows.body));
    let elsewhere = rows.clone().with_stream(8);
    assert!(!rw.response_needs_whole(&elsewhere.header, &elsewhere.body));

    let event = Frame::new(4, true, 0, -1, opcode::EVENT, vec![0u8; 16]);
    assert!(rw.response_needs_whole(&event.header, &event.body));

    // SCHEMA_CHANGE (kind 5), after a warnings list: held for schema agreement.
    let mut body = BytesMut::new();
    body.put_u16(1);
    body.put_u16(4);
    body.put_slice(b"warn");
    body.put_i32(5);
    let schema = result(9, flags::WARNING, body.freeze());
    assert!(rw.response_needs_whole(&schema.header, &schema.body));
    // Unreadable first bytes: held whole too.
    let cut = result(9, flags::WARNING, Bytes::from_static(&[0, 1, 0]));
    assert!(rw.response_needs_whole(&cut.header, &cut.body));
}
