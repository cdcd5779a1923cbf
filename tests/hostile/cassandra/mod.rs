//! The CQL table: one Cassandra 5.0 (TLS, PasswordAuthenticator), one proxy (handshake timeout
//! 5 s, `max_frame_size` 64 KiB so that an oversized request is cheap), every case at once, an
//! unrelated scylla session writing and reading throughout. Openings the proxy answers itself
//! are also sent to Cassandra directly (over TLS) and the answers compared: version byte,
//! stream, opcode and error code.

mod handshake;
mod session;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use dbproxy_cassandra::Framing;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::TlsConnector;

use super::{
    Background, Case, Outcome, case, case_with, connect, cql_wire::*, ensure, random_bytes,
    read_to_close, run_cases, storm, wait_active,
};
use crate::stack::FAILED_SESSION;

/// The proxy's handshake timeout (the upstream login runs under it too).
const HANDSHAKE: Duration = Duration::from_secs(15);

/// The generous bound on any one answer or close.
const LIMIT: Duration = Duration::from_secs(45);

/// The proxy's max_frame_size.
const MAX_FRAME: usize = 64 * 1024;

pub(crate) struct Cql {
    proxy: SocketAddr,
    /// Cassandra's native port (TLS only).
    direct: SocketAddr,
    tls: TlsConnector,
}

/// What the connection does after the answer.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// The proxy closes it (nothing more arrives).
    Close,
    /// It stays usable: OPTIONS (before STARTUP) or a query (after READY) is answered.
    Open,
    /// The client then closes its write side: the proxy closes too, sending nothing more.
    Eof,
}

/// How a refusal is compared with Cassandra's own answer to the same bytes.
#[derive(Clone, Copy, PartialEq)]
enum Compare {
    /// Not compared.
    No,
    /// Version byte, stream, opcode and error code.
    Exact,
    /// All but the version byte, and the error's words: Cassandra answers some refusals in its
    /// newest version (v5) whatever the client spoke; the proxy answers in the client's.
    NotVersion,
    /// Cassandra closes without an answer; the proxy says why (a protocol error) and closes.
    Silent,
}

/// Cassandra's own first answer to `bytes`.
async fn direct(ctx: &Cql, bytes: &[u8]) -> Result<Reply, String> {
    use tokio::io::AsyncReadExt;
    let tcp = connect(ctx.direct).await?;
    let name = rustls_pki_types::ServerName::IpAddress(ctx.direct.ip().into());
    let mut s = ctx
        .tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to Cassandra: {e}"))?;
    s.write_all(bytes).await.map_err(|e| e.to_string())?;
    // Until one frame parses, or the close.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(mut f) = frames(&got, Framing::Legacy) {
            if !f.is_empty() {
                return Ok(f.remove(0));
            }
        }
        match tokio::time::timeout(LIMIT, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return Err(format!("Cassandra itself: closed after {got:?}")),
        }
    }
}

/// Checks `after` on a connection that just got its answer (`ready`: past READY, v4).
async fn check_after(s: &mut TcpStream, after: After, ready: bool) -> Outcome {
    match after {
        After::Close | After::Eof => {
            if after == After::Eof {
                let _ = s.shutdown().await;
            }
            let rest = read_to_close(s, LIMIT).await?;
            ensure!(
                rest.is_empty(),
                "{} more bytes before the close",
                rest.len()
            );
        }
        After::Open if ready => {
            s.write_all(&query(4, 100, "SELECT release_version FROM system.local"))
                .await
                .map_err(|e| e.to_string())?;
            let r = read_frame(s, LIMIT).await?;
            ensure!(
                (r.stream, r.opcode) == (100, RESULT),
                "the session did not go on: {r}"
            );
        }
        After::Open => {
            s.write_all(&raw(0x04, 99, OPTIONS, &[]))
                .await
                .map_err(|e| e.to_string())?;
            let r = read_frame(s, LIMIT).await?;
            ensure!(
                (r.stream, r.opcode) == (99, SUPPORTED),
                "the connection did not go on: {r}"
            );
        }
    }
    Ok(())
}

/// `bytes` before any STARTUP: an ERROR `code` from the proxy on `version_byte`/`stream`, then
/// `after`; when `compare`, Cassandra answers the same bytes with the same header and code.
fn refused(
    name: &str,
    bytes: Vec<u8>,
    version_byte: u8,
    stream: i16,
    code: i32,
    after: After,
    compare: Compare,
) -> Case<Cql> {
    case_with(name, bytes, move |ctx: Arc<Cql>, bytes| async move {
        let mut s = connect(ctx.proxy).await?;
        let _ = s.write_all(&bytes).await;
        let r = read_frame(&mut s, LIMIT).await?;
        ensure!(
            r.key() == (version_byte, stream, ERROR, Some(code)),
            "got {r}, expected ERROR {code:#06x} on {version_byte:#04x}/{stream}"
        );
        check_after(&mut s, after, false).await?;
        if compare == Compare::Silent {
            match direct(&ctx, &bytes).await {
                Err(e) if e.ends_with("closed after []") => {}
                other => {
                    return Err(format!(
                        "Cassandra itself: {other:?}, expected a silent close"
                    ));
                }
            }
        } else if compare != Compare::No {
            let d = direct(&ctx, &bytes).await?;
            let (mut dk, mut rk) = (d.key(), r.key());
            if compare == Compare::NotVersion {
                (dk.0, rk.0) = (0, 0);
                // The words too, then.
                ensure!(
                    d.error() == r.error(),
                    "Cassandra itself answers {d}, the proxy {r}"
                );
            }
            ensure!(dk == rk, "Cassandra itself answers {d}, the proxy {r}");
        }
        Ok(())
    })
}

/// `bytes` (then, if `eof`, the write side closed): closed without an answer.
fn silent(name: &str, bytes: Vec<u8>, eof: bool) -> Case<Cql> {
    case_with(name, bytes, move |ctx: Arc<Cql>, bytes| async move {
        let mut s = connect(ctx.proxy).await?;
        let _ = s.write_all(&bytes).await;
        if eof {
            let _ = s.shutdown().await;
        }
        let got = read_to_close(&mut s, LIMIT).await?;
        ensure!(
            got.is_empty(),
            "expected a silent close, got {:?}",
            frames(&got, Framing::Legacy)
        );
        Ok(())
    })
}

/// STARTUP (v4, stream 1) answered READY, then `bytes`: the next frames must satisfy
/// `expect` (in order: (stream, opcode, error code)), then `after`.
fn after_ready(
    name: &str,
    bytes: Vec<u8>,
    expect: &'static [(i16, u8, Option<i32>)],
    after: After,
) -> Case<Cql> {
    case_with(name, bytes, move |ctx: Arc<Cql>, bytes| async move {
        let mut s = connect(ctx.proxy).await?;
        s.write_all(&startup_v(4, 1))
            .await
            .map_err(|e| e.to_string())?;
        let r = read_frame(&mut s, LIMIT).await?;
        ensure!((r.stream, r.opcode) == (1, READY), "STARTUP answered {r}");
        let _ = s.write_all(&bytes).await;
        for (i, want) in expect.iter().enumerate() {
            let r = read_frame(&mut s, LIMIT)
                .await
                .map_err(|e| format!("frame {i}: {e}"))?;
            ensure!(
                r.version_byte == 0x84 && (r.stream, r.opcode, r.error().map(|e| e.0)) == *want,
                "frame {i}: got {r}, expected {want:?}"
            );
        }
        check_after(&mut s, after, true).await
    })
}

/// What the storm's connections send before they close (or reset).
fn storm_prefix(i: usize) -> Vec<u8> {
    match i % 5 {
        0 => vec![],
        1 => vec![0x04, 0],
        2 => raw(0x04, 0, OPTIONS, &[]),
        3 => startup_v(4, 1),
        _ => random_bytes(i as u64, 64),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_cql_clients_get_exact_answers_while_others_work() {
    let a = crate::cassandra::Account::new(1, "hostile").await;
    let forged = "x\nERROR forged: level=ERROR msg=\"pwned\" \u{1b}[31m";
    let proxy = a
        .proxy()
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--handshake-timeout", &format!("{}s", HANDSHAKE.as_secs())])
        .env(
            "ENTRA_DB_PROXY_CASSANDRA_MAX_FRAME_SIZE",
            MAX_FRAME.to_string(),
        )
        .expect_warnings(&[FAILED_SESSION, "garbage from the client"])
        .spawn();
    let ctx = Arc::new(Cql {
        proxy: proxy.addrs["cassandra"],
        direct: a.cluster.contact_point(),
        tls: TlsConnector::from(a.cluster.tls_config()),
    });

    // The unrelated session: writes a row and reads it back, over and over.
    let session = Arc::new(crate::cassandra::session(&proxy, false).await);
    session
        .query_unpaged("CREATE KEYSPACE IF NOT EXISTS ks_hostile WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[])
        .await
        .unwrap();
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS ks_hostile.t (id int PRIMARY KEY, v text)",
            &[],
        )
        .await
        .unwrap();
    let insert = session
        .prepare("INSERT INTO ks_hostile.t (id, v) VALUES (?, ?)")
        .await
        .unwrap();
    let select = session
        .prepare("SELECT v FROM ks_hostile.t WHERE id = ?")
        .await
        .unwrap();
    let background = Background::start(move |i| {
        let (session, insert, select) = (session.clone(), insert.clone(), select.clone());
        async move {
            let id = i as i32;
            session
                .execute_unpaged(&insert, (id, format!("v{id}")))
                .await
                .map_err(|e| format!("{e}"))?;
            let rows = session
                .execute_unpaged(&select, (id,))
                .await
                .map_err(|e| format!("{e}"))?;
            let (v,): (String,) = rows
                .into_rows_result()
                .map_err(|e| format!("{e}"))?
                .single_row()
                .map_err(|e| format!("{e}"))?;
            if v == format!("v{id}") {
                Ok(())
            } else {
                Err(format!("row {id} reads {v:?}"))
            }
        }
    });

    // The driver's own connections (control and pool): what the gauge must come back to.
    let admin = proxy.admin.unwrap();
    let baseline = super::active_connections(admin).await;
    let mut cases = Vec::new();
    handshake::handshake_cases(&mut cases);
    session::session_cases(&mut cases);
    // A driver name that tries to forge log lines: served; the log is checked at the end.
    cases.push(after_ready_with(
        "a STARTUP option forging log lines",
        startup(4, 1, &[("CQL_VERSION", "3.0.0"), ("DRIVER_NAME", forged)]),
    ));
    let n = cases.len();
    let started = std::time::Instant::now();
    let during = background.done();
    let mut failures = run_cases(ctx.clone(), cases, LIMIT + HANDSHAKE, 8).await;
    if background.done() == during {
        failures.push("the unrelated session made no progress while the cases ran".into());
    }
    let table_time = started.elapsed();

    storm(ctx.proxy, 300, storm_prefix).await;
    if let Err(e) = wait_active(admin, baseline, LIMIT).await {
        failures.push(format!("connect/close storm: {e}"));
    }
    match background.finish(20).await {
        Ok(q) => eprintln!("{n} cases in {table_time:?}; the unrelated session ran {q} queries"),
        Err(e) => failures.push(e),
    }
    for line in proxy.lines() {
        if line.starts_with("ERROR forged")
            || line.contains('\u{1b}')
            || serde_json::from_str::<serde_json::Value>(&line).is_err()
        {
            failures.push(format!("log forgery: a line not JSON or forged: {line:?}"));
        }
    }
    if !proxy.log().contains("ERROR forged") {
        failures.push("log forgery: the driver name is not in the log (escaped)".into());
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `startup` (a v4 STARTUP on stream 1) answered READY, and the session works.
fn after_ready_with(name: &str, startup: Vec<u8>) -> Case<Cql> {
    case_with(name, startup, move |ctx: Arc<Cql>, startup| async move {
        let mut s = connect(ctx.proxy).await?;
        s.write_all(&startup).await.map_err(|e| e.to_string())?;
        let r = read_frame(&mut s, LIMIT).await?;
        ensure!((r.stream, r.opcode) == (1, READY), "STARTUP answered {r}");
        check_after(&mut s, After::Open, true).await
    })
}
