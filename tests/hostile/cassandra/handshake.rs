//! Before READY: version bytes, directions, opcodes and requests before STARTUP, STARTUP
//! bodies, lengths, truncations, silence, a byte a second, random bytes.

use super::*;

pub(super) fn handshake_cases(cases: &mut Vec<Case<Cql>>) {
    use After::*;
    use Compare::*;
    const P: i32 = PROTOCOL_ERROR;
    // Versions: OPTIONS on stream 7 in each.
    for v in [0x00u8, 0x01, 0x02] {
        cases.push(refused(
            &format!("version byte {v:#04x}"),
            raw(v, 7, OPTIONS, &[]),
            0x80 | v,
            7,
            P,
            Close,
            Silent,
        ));
    }
    // Cassandra 5.0 knows v6 as a beta and answers in it; the proxy, which does not speak v6,
    // answers in its newest version, as Cassandra does for versions it does not know (0x7f).
    cases.push(refused(
        "version byte 0x06",
        raw(0x06, 7, OPTIONS, &[]),
        0x85,
        7,
        P,
        Close,
        No,
    ));
    cases.push(refused(
        "version byte 0x7f",
        raw(0x7f, 7, OPTIONS, &[]),
        0x85,
        7,
        P,
        Close,
        Exact,
    ));
    cases.push(refused(
        "a response frame (0x84) from the client",
        raw(0x84, 7, OPTIONS, &[]),
        0x84,
        7,
        P,
        Close,
        NotVersion,
    ));
    cases.push(refused(
        "HTTP request",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        0x85,
        0x5420,
        P,
        Close,
        Exact,
    ));
    // Requests before STARTUP: refused on their stream, the connection goes on.
    cases.push(refused(
        "unknown opcode 0x7f before STARTUP",
        raw(0x04, 7, 0x7f, &[]),
        0x84,
        7,
        P,
        Open,
        NotVersion,
    ));
    cases.push(refused(
        "QUERY before STARTUP",
        query(4, 7, "SELECT * FROM system.local"),
        0x84,
        7,
        P,
        Open,
        Exact,
    ));
    cases.push(refused(
        "REGISTER before STARTUP",
        raw(
            0x04,
            7,
            REGISTER,
            &[
                0, 1, 0, 13, b'S', b'C', b'H', b'E', b'M', b'A', b'_', b'C', b'H', b'A', b'N',
                b'G', b'E',
            ],
        ),
        0x84,
        7,
        P,
        Open,
        Exact,
    ));
    cases.push(refused(
        "AUTH_RESPONSE before STARTUP",
        raw(0x04, 7, AUTH_RESPONSE, &[0, 0, 0, 4, 0, b'u', 0, b'p']),
        0x84,
        7,
        P,
        Open,
        Exact,
    ));
    // STARTUP bodies.
    cases.push(refused(
        "STARTUP with a truncated string map",
        raw(0x04, 7, STARTUP, b"\x00\x05\x00\x02ab"),
        0x84,
        7,
        P,
        Close,
        Silent,
    ));
    cases.push(refused(
        "STARTUP announcing 65535 pairs",
        raw(0x04, 7, STARTUP, b"\xff\xff"),
        0x84,
        7,
        P,
        Close,
        Silent,
    ));
    cases.push(refused(
        "STARTUP with a non-UTF-8 key",
        raw(
            0x04,
            7,
            STARTUP,
            &string_map(&[(b"CQL_VERSION", b"3.0.0"), (b"\xff\xfe", b"x")]),
        ),
        0x84,
        7,
        P,
        Close,
        Silent,
    ));
    cases.push(refused(
        "STARTUP with COMPRESSION zstd",
        startup(4, 7, &[("CQL_VERSION", "3.0.0"), ("COMPRESSION", "zstd")]),
        0x84,
        7,
        P,
        Open,
        Exact,
    ));
    cases.push(refused(
        "STARTUP without CQL_VERSION",
        startup(4, 7, &[("DRIVER_NAME", "hostile")]),
        0x84,
        7,
        P,
        Close,
        Exact,
    ));
    // Cassandra 5.0 takes any CQL_VERSION (the proxy passes STARTUP through).
    cases.push(after_ready_with(
        "STARTUP with CQL_VERSION 99.0.0",
        startup(4, 1, &[("CQL_VERSION", "99.0.0")]),
    ));
    // Lengths: refused at the header, before the body is awaited or buffered.
    cases.push(refused(
        "negative frame length before STARTUP",
        raw_len(0x04, 7, OPTIONS, 0xffff_fff0, &[]),
        0x84,
        7,
        P,
        Close,
        No,
    ));
    cases.push(refused(
        "STARTUP over the handshake's frame cap",
        raw_len(0x04, 7, STARTUP, 1 << 20, &[0; 1024]),
        0x84,
        7,
        P,
        Close,
        No,
    ));
    // Truncations, silence, slowness: closed without a word.
    cases.push(silent("truncated header, then EOF", vec![0x04, 0, 0], true));
    cases.push(silent(
        "truncated body, then EOF",
        raw_len(0x04, 7, STARTUP, 100, &[0, 1, 0]),
        true,
    ));
    cases.push(silent("connect, then EOF", vec![], true));
    cases.push(silent("silent client", vec![], false));
    cases.push(case(
        "slowloris STARTUP: a byte a second",
        |ctx: Arc<Cql>| async move {
            let s = connect(ctx.proxy).await?;
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                for b in startup_v(4, 1) {
                    if w.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            let got = read_to_close(&mut r, LIMIT).await?;
            writer.abort();
            ensure!(got.is_empty(), "got {} bytes", got.len());
            Ok(())
        },
    ));
    // Random bytes (seeded): a random version byte, refused as Cassandra refuses it.
    for seed in 1..=4u64 {
        let bytes = random_bytes(seed, 256);
        let v = bytes[0] & 0x7f;
        assert!(!(1..=5).contains(&v), "seed {seed}: pick another");
        let stream = i16::from_be_bytes([bytes[2], bytes[3]]);
        cases.push(refused(
            &format!("random bytes, seed {seed}"),
            bytes,
            0x85,
            stream,
            P,
            Close,
            Exact,
        ));
    }
}
