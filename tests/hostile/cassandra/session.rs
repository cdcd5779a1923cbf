//! After READY: pipelining, the frame cap, stream ids, other versions and opcodes, truncation,
//! and v5 segments (good, bad CRCs, legacy framing).

use super::*;

pub(super) fn session_cases(cases: &mut Vec<Case<Cql>>) {
    use After::*;
    const LOCAL: &str = "SELECT release_version FROM system.local";
    // Pipelined behind STARTUP: kept and answered after READY.
    let mut pipelined = startup_v(4, 1);
    pipelined.extend_from_slice(&query(4, 2, LOCAL));
    let pipelined = Arc::new(pipelined);
    cases.push(case(
        "a QUERY pipelined behind STARTUP",
        move |ctx: Arc<Cql>| {
            let bytes = pipelined.clone();
            async move {
                let mut s = connect(ctx.proxy).await?;
                s.write_all(&bytes).await.map_err(|e| e.to_string())?;
                let ready = read_frame(&mut s, LIMIT).await?;
                let result = read_frame(&mut s, LIMIT).await?;
                ensure!(
                    (ready.stream, ready.opcode, result.stream, result.opcode)
                        == (1, READY, 2, RESULT),
                    "got {ready} {result}"
                );
                check_after(&mut s, Open, true).await
            }
        },
    ));
    // Over max_frame_size: skipped as it arrives, refused as Cassandra refuses it, and on.
    let body = vec![b'x'; MAX_FRAME * 3 / 2];
    cases.push(after_ready(
        "a request over max_frame_size",
        raw(0x04, 3, QUERY, &body),
        &[(3, ERROR, Some(0x2200))],
        Open,
    ));
    cases.push(after_ready(
        "two requests on one stream in flight",
        [query(4, 5, LOCAL), query(4, 5, LOCAL)].concat(),
        &[(5, RESULT, None), (5, RESULT, None)],
        Open,
    ));
    cases.push(after_ready(
        "another protocol version after READY",
        query(3, 6, LOCAL),
        &[(6, ERROR, Some(PROTOCOL_ERROR))],
        Close,
    ));
    // Passed to Cassandra, which refuses them on their stream ("Unknown opcode 127", "Wrong
    // protocol direction") and then answers every later request with the same error; the
    // client's close ends the session cleanly.
    cases.push(after_ready(
        "unknown opcode 0x7f after READY",
        raw(0x04, 6, 0x7f, &[]),
        &[(6, ERROR, Some(PROTOCOL_ERROR))],
        Eof,
    ));
    cases.push(after_ready(
        "a response frame after READY",
        raw(0x84, 6, QUERY, &[]),
        &[(6, ERROR, Some(PROTOCOL_ERROR))],
        Eof,
    ));
    cases.push(after_ready(
        "STARTUP again after READY",
        startup_v(4, 6),
        &[(6, ERROR, Some(PROTOCOL_ERROR))],
        Open,
    ));
    cases.push(after_ready(
        "a negative stream id (reserved for events)",
        query(4, -1, LOCAL),
        &[(-1, RESULT, None)],
        Open,
    ));
    cases.push(after_ready(
        "a QUERY with a garbage body",
        raw(0x04, 6, QUERY, &[0xff; 7]),
        &[(6, ERROR, Some(PROTOCOL_ERROR))],
        Open,
    ));
    // Truncated or endless after READY, then EOF: a clean close, nothing hangs.
    cases.push(after_ready(
        "truncated body after READY, then EOF",
        raw_len(0x04, 6, QUERY, 100, &[0; 10]),
        &[],
        Eof,
    ));
    cases.push(after_ready(
        "negative frame length after READY, then EOF",
        raw_len(0x04, 6, QUERY, 0xffff_fff0, &[0; 10]),
        &[],
        Eof,
    ));
    // v5: segments after READY.
    cases.push(v5("v5: a query in a segment", |q| q, (2, RESULT, None)));
    cases.push(v5(
        "v5: a segment with a bad payload CRC",
        |mut q| {
            let n = q.len();
            q[n - 1] ^= 0xff;
            q
        },
        (0, ERROR, Some(PROTOCOL_ERROR)),
    ));
    cases.push(v5(
        "v5: a segment with a bad header CRC",
        |mut q| {
            q[5] ^= 0xff;
            q
        },
        (0, ERROR, Some(PROTOCOL_ERROR)),
    ));
    cases.push(v5(
        "v5: legacy framing after READY",
        |_| query(5, 2, LOCAL),
        (0, ERROR, Some(PROTOCOL_ERROR)),
    ));
    // A frame over max_frame_size in v5 framing: its header is judged in the first of its
    // segments; the session is closed with a protocol error on its stream.
    cases.push(v5(
        "v5: a frame over max_frame_size",
        |_| {
            let header = raw_len(0x05, 2, QUERY, (MAX_FRAME * 2) as u32, &[0; 1000]);
            let mut out = bytes::BytesMut::new();
            dbproxy_cassandra::segment::encode(&header, false, false, &mut out);
            out.to_vec()
        },
        (2, ERROR, Some(PROTOCOL_ERROR)),
    ));
}

/// A v5 STARTUP (legacy framing), READY, then `segment(a query on stream 2 in one segment)`:
/// answered with one frame (in a segment) `want` = (stream, opcode, error code): a RESULT
/// (the session goes on), or an ERROR after which the proxy closes (on stream 0 when no frame
/// can be named: a bad CRC, garbled segments).
fn v5(name: &str, segment: fn(Vec<u8>) -> Vec<u8>, want: (i16, u8, Option<i32>)) -> Case<Cql> {
    case(name, move |ctx: Arc<Cql>| async move {
        let mut s = connect(ctx.proxy).await?;
        s.write_all(&startup_v(5, 1))
            .await
            .map_err(|e| e.to_string())?;
        let r = read_frame(&mut s, LIMIT).await?;
        ensure!(
            (r.version_byte, r.stream, r.opcode) == (0x85, 1, READY),
            "STARTUP answered {r}"
        );
        let _ = s
            .write_all(&segment(query_v5(
                2,
                "SELECT release_version FROM system.local",
            )))
            .await;
        let got = match want.1 {
            RESULT => read_v5_frame(&mut s).await?,
            _ => frames(
                &read_to_close(&mut s, LIMIT).await?,
                Framing::V5 { lz4: false },
            )?,
        };
        let keys: Vec<_> = got.iter().map(Reply::key).collect();
        let want = (0x85, want.0, want.1, want.2);
        ensure!(keys == [want], "got {got:?}, expected {want:?}");
        Ok(())
    })
}

/// Reads until one v5 frame (in segments) has arrived.
async fn read_v5_frame(s: &mut TcpStream) -> Result<Vec<Reply>, String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(f) = frames(&got, Framing::V5 { lz4: false }) {
            if !f.is_empty() {
                return Ok(f);
            }
        }
        match tokio::time::timeout(LIMIT, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => {
                return Err(format!(
                    "no v5 frame: {} bytes then close/timeout",
                    got.len()
                ));
            }
        }
    }
}
