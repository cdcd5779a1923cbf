//! The PostgreSQL table: one stack, two proxies (local TLS offered with a certificate of its
//! own, and local TLS disabled), every case at once, an unrelated tokio-postgres session
//! querying throughout. Where PostgreSQL answers the same bytes with an ErrorResponse, the
//! proxy must answer with the same SQLSTATE; where PostgreSQL closes without a word (its
//! COMMERROR cases: bad lengths, incomplete packets), the proxy tells the client why with 08P01
//! and closes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{
    Background, Case, Outcome, case, ensure, pg_wire::*, random_bytes, read_n, read_to_close,
    run_cases, storm, wait_active,
};
use crate::stack::{self, DB, ENTRA_USER, FAILED_SESSION, Stack};

/// The proxies' handshake timeout: silent and slow clients end after it.
const HANDSHAKE: Duration = Duration::from_secs(3);
/// The generous bound on any one answer or close.
const LIMIT: Duration = Duration::from_secs(20);

/// What the cases share.
pub(crate) struct Pg {
    /// The proxy offering local TLS (its own certificate, trusted by `to_proxy`).
    tls: SocketAddr,
    /// The proxy with local TLS disabled (SSLRequest answered 'N').
    plain: SocketAddr,
    /// PostgreSQL itself (plain TCP: it answers openings before pg_hba.conf says TLS only).
    direct: SocketAddr,
    /// A TLS client trusting the proxy's certificate.
    to_proxy: TlsConnector,
    /// A TLS client trusting PostgreSQL's certificate.
    to_pg: TlsConnector,
}

/// Whether, and how, PostgreSQL's own answer to the same bytes is compared.
#[derive(Clone, Copy)]
enum Direct {
    /// Not compared (the proxy decides differently by design, or the server would wait).
    No,
    /// PostgreSQL answers with a FATAL of the same SQLSTATE.
    Same,
    /// PostgreSQL closes without an answer (COMMERROR); the proxy explains with 08P01.
    Silent,
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

/// Connects, sends `bytes` (a write error is the proxy's close), reads until the close.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = connect(addr).await?;
    let _ = s.write_all(bytes).await;
    read_to_close(&mut s, LIMIT).await
}

async fn compare_direct(ctx: &Pg, bytes: &[u8], direct: Direct, code: &str) -> Outcome {
    match direct {
        Direct::No => Ok(()),
        Direct::Same => {
            let d = exchange(ctx.direct, bytes).await?;
            let (dc, dm) = single_fatal(&d).map_err(|e| format!("PostgreSQL itself: {e}"))?;
            ensure!(
                dc == code,
                "PostgreSQL itself answers {dc} ({dm:?}), the proxy {code}"
            );
            Ok(())
        }
        Direct::Silent => {
            let d = exchange(ctx.direct, bytes).await?;
            ensure!(
                d.is_empty(),
                "PostgreSQL itself answered {}, expected a silent close",
                describe(&d)
            );
            Ok(())
        }
    }
}

/// `bytes` as the opening: one FATAL `code` whose message starts with `prefix`, then close.
fn fatal(
    name: &str,
    bytes: Vec<u8>,
    code: &'static str,
    prefix: &'static str,
    direct: Direct,
) -> Case<Pg> {
    let bytes = Arc::new(bytes);
    case(name, move |ctx: Arc<Pg>| {
        let bytes = bytes.clone();
        async move {
            let got = exchange(ctx.tls, &bytes).await?;
            let (c, m) = single_fatal(&got)?;
            ensure!(
                c == code && m.starts_with(prefix),
                "got {c} {m:?}, expected {code} {prefix:?}…"
            );
            compare_direct(&ctx, &bytes, direct, code).await
        }
    })
}

/// `bytes` as the opening: closed without an answer.
fn silent(name: &str, bytes: Vec<u8>, direct: Direct) -> Case<Pg> {
    let bytes = Arc::new(bytes);
    case(name, move |ctx: Arc<Pg>| {
        let bytes = bytes.clone();
        async move {
            let got = exchange(ctx.tls, &bytes).await?;
            ensure!(
                got.is_empty(),
                "expected a silent close, got {}",
                describe(&got)
            );
            compare_direct(&ctx, &bytes, direct, "").await
        }
    })
}

/// The first column of each row `sql` returns, or the ErrorResponse.
async fn simple_query<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    sql: &str,
) -> Result<Vec<String>, String> {
    s.write_all(&query(sql)).await.map_err(|e| e.to_string())?;
    let msgs = read_until(s, b'Z', 1, LIMIT).await?;
    if let Some((_, e)) = msgs.iter().find(|(t, _)| *t == b'E') {
        return Err(format!("{sql}: {} {:?}", field(e, b'C'), field(e, b'M')));
    }
    Ok(msgs
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, row)| {
            let len = i32::from_be_bytes([row[2], row[3], row[4], row[5]]);
            if len < 0 {
                "NULL".into()
            } else {
                String::from_utf8_lossy(&row[6..6 + len as usize]).into_owned()
            }
        })
        .collect())
}

/// After the login: `checks` (SQL, expected first column of the one row), then Terminate and
/// a clean close.
async fn logged_in<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    checks: &[(&str, &str)],
) -> Outcome {
    for (sql, want) in checks {
        let got = simple_query(s, sql).await?;
        ensure!(got == [*want], "{sql}: got {got:?}, expected {want:?}");
    }
    let _ = s.write_all(&terminate()).await;
    let rest = read_to_close(s, LIMIT).await?;
    ensure!(rest.is_empty(), "after Terminate: {}", describe(&rest));
    Ok(())
}

/// `bytes` as the opening on `listener`: logged in (AuthenticationOk … ReadyForQuery), the
/// backend's first messages are `first` (e.g. "R" or "vR"), then `checks`.
fn session(
    name: &str,
    plain: bool,
    bytes: Vec<u8>,
    first: &'static str,
    checks: &'static [(&'static str, &'static str)],
) -> Case<Pg> {
    let bytes = Arc::new(bytes);
    case(name, move |ctx: Arc<Pg>| {
        let bytes = bytes.clone();
        async move {
            let mut s = connect(if plain { ctx.plain } else { ctx.tls }).await?;
            s.write_all(&bytes).await.map_err(|e| e.to_string())?;
            let msgs = read_until(&mut s, b'Z', 1, LIMIT).await?;
            let tags: String = msgs.iter().map(|(t, _)| *t as char).collect();
            ensure!(
                tags.starts_with(first),
                "login began {tags:?}, expected {first:?}…"
            );
            logged_in(&mut s, checks).await
        }
    })
}

/// A StartupMessage for the test database with extra parameters.
fn startup_with(extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut pairs: Vec<(&[u8], &[u8])> = vec![(b"user", b"app"), (b"database", DB.as_bytes())];
    pairs.extend_from_slice(extra);
    packet(V3_0, &params(&pairs))
}

fn opening_cases(cases: &mut Vec<Case<Pg>>) {
    use Direct::*;
    const LEN: &str = "invalid length of startup packet";
    const PROTO: &str = "unsupported frontend protocol";
    let ok = startup(&[("user", "app"), ("database", DB)]);
    // Lengths.
    cases.push(fatal("length 0", vec![0, 0, 0, 0], "08P01", LEN, Silent));
    cases.push(fatal(
        "length 4",
        vec![0, 0, 0, 4, 0, 3, 0, 0],
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "length 7",
        vec![0, 0, 0, 7, 0, 3, 0],
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "length negative",
        vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0],
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "length 2^31-1",
        vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "length 10005",
        packet(V3_0, &vec![b'a'; 10_005 - 8]),
        "08P01",
        LEN,
        Silent,
    ));
    // 10,000 parameters, and a 1 MB value: refused at the length word, long before the end.
    let many: Vec<(String, String)> = (0..10_000).map(|i| (format!("p{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    cases.push(fatal(
        "10,000 parameters",
        startup(&many),
        "08P01",
        LEN,
        Silent,
    ));
    let mb = "x".repeat(1 << 20);
    cases.push(fatal(
        "1 MB value",
        startup(&[("user", "app"), ("application_name", &mb)]),
        "08P01",
        LEN,
        Silent,
    ));
    // Exactly PostgreSQL's limit: 10,000 bytes after the length word (the client's user as
    // long as the proxy's, so that the packet sent upstream is no longer).
    let user = "u".repeat(ENTRA_USER.len());
    let base = startup(&[("user", &user), ("database", DB)]);
    let pad = "p".repeat(10_004 - base.len() - "application_name\0\0".len());
    let at_limit = startup(&[
        ("user", &user),
        ("database", DB),
        ("application_name", &pad),
    ]);
    assert_eq!(at_limit.len(), 10_004);
    // The same packet with a short user grows past the limit once the proxy sets its own.
    let longer_pad = format!("{pad}{}", "p".repeat(ENTRA_USER.len() - 1));
    let short = startup(&[
        ("user", "u"),
        ("database", DB),
        ("application_name", &longer_pad),
    ]);
    assert_eq!(short.len(), 10_004);
    cases.push(fatal(
        "a startup that outgrows the limit upstream",
        short,
        "08P01",
        "invalid length of startup packet: 10017 once the proxy set the user",
        Direct::No,
    ));
    cases.push(session(
        "10,004-byte startup (PostgreSQL's limit)",
        false,
        at_limit,
        "R",
        &[],
    ));

    // Versions.
    cases.push(protocol_2("protocol 2.0", 2 << 16));
    cases.push(protocol_2("protocol 1.0", 1 << 16));
    cases.push(fatal(
        "protocol 4.0",
        packet(4 << 16, &params(&[(b"user", b"app")])),
        "0A000",
        PROTO,
        Same,
    ));
    cases.push(fatal(
        "protocol 0.0",
        packet(0, &params(&[])),
        "0A000",
        PROTO,
        Same,
    ));
    cases.push(fatal(
        "protocol 65535.65535",
        packet(u32::MAX, &params(&[])),
        "0A000",
        PROTO,
        Same,
    ));
    cases.push(fatal(
        "protocol 1234.5681",
        packet(80_877_105, &params(&[])),
        "0A000",
        PROTO,
        Same,
    ));
    // 1234.5678 is the CancelRequest code: with no key, a CancelRequest of the wrong length.
    cases.push(fatal(
        "protocol 1234.5678 (CancelRequest, 8 bytes)",
        packet(CANCEL_CODE, &[]),
        "08P01",
        "invalid length of CancelRequest",
        Silent,
    ));
    cases.push(fatal(
        "CancelRequest of 14 bytes",
        packet(CANCEL_CODE, &[0, 0, 0, 1, 0, 0]),
        "08P01",
        "invalid length of CancelRequest",
        Silent,
    ));
    // A well-formed CancelRequest for no session: forwarded, closed without a word, as by PostgreSQL.
    cases.push(silent(
        "CancelRequest for no session",
        packet(CANCEL_CODE, &[0, 0, 0, 1, 9, 9, 9, 9]),
        Silent,
    ));
    // Newer 3.x minors: PostgreSQL 15 answers NegotiateProtocolVersion ('v') and serves 3.0.
    cases.push(session(
        "protocol 3.2",
        false,
        packet(
            V3_0 | 2,
            &params(&[(b"user", b"app"), (b"database", DB.as_bytes())]),
        ),
        "vR",
        &[("select 1", "1")],
    ));
    cases.push(session(
        "protocol 3.9",
        false,
        packet(
            V3_0 | 9,
            &params(&[(b"user", b"app"), (b"database", DB.as_bytes())]),
        ),
        "vR",
        &[("select 1", "1")],
    ));
    cases.push(session(
        "unknown _pq_ option",
        false,
        startup_with(&[(b"_pq_.hostile", b"1")]),
        "vR",
        &[],
    ));

    // Layout.
    let mut no_terminator = ok.clone();
    no_terminator.pop();
    no_terminator[3] -= 1;
    cases.push(fatal(
        "no terminator",
        no_terminator,
        "08P01",
        "invalid startup packet layout",
        Same,
    ));
    cases.push(fatal(
        "name without a value",
        packet(V3_0, b"user\0"),
        "08P01",
        "invalid startup packet layout",
        Same,
    ));
    cases.push(fatal(
        "nothing after the version",
        packet(V3_0, &[]),
        "08P01",
        "invalid startup packet layout",
        Same,
    ));
    cases.push(fatal(
        "bytes after the terminator",
        packet(V3_0, b"user\0app\0\0junk\0\0"),
        "08P01",
        "invalid startup packet layout",
        Same,
    ));
    cases.push(fatal(
        "non-UTF-8 parameter name",
        startup_with(&[(b"appl\xffcation_name", b"x")]),
        "08P01",
        "invalid startup packet: parameter name is not valid UTF-8",
        No,
    ));
    // The proxy logs in as its Entra user whatever the client says, so no (or an empty) user is
    // not an error here, unlike PostgreSQL's 28000 "no PostgreSQL user name specified".
    cases.push(session(
        "no user",
        false,
        packet(V3_0, &params(&[(b"database", DB.as_bytes())])),
        "R",
        &[("select current_user", ENTRA_USER)],
    ));
    cases.push(session(
        "empty user",
        false,
        startup(&[("user", ""), ("database", DB)]),
        "R",
        &[("select current_user", ENTRA_USER)],
    ));
    cases.push(session(
        "no parameters at all",
        false,
        packet(V3_0, &params(&[])),
        "R",
        &[("select current_database()", DB)],
    ));
    // Duplicates: the last one wins, as in PostgreSQL.
    cases.push(session(
        "duplicate database",
        false,
        startup(&[("user", "app"), ("database", "nope"), ("database", DB)]),
        "R",
        &[("select current_database()", DB)],
    ));
    cases.push(session(
        "duplicate application_name",
        false,
        startup_with(&[
            (b"application_name", b"first"),
            (b"application_name", b"second"),
        ]),
        "R",
        &[("show application_name", "second")],
    ));
    cases.push(session(
        "duplicate user",
        false,
        startup(&[("user", "a"), ("user", "b"), ("database", DB)]),
        "R",
        &[("select current_user", ENTRA_USER)],
    ));
    // Values go upstream as sent; the server's answers come back verbatim.
    cases.push(session(
        "options with newlines and tabs",
        false,
        startup_with(&[(
            b"options",
            b"-c work_mem=1234kB\n-c\tstatement_timeout=4321",
        )]),
        "R",
        &[
            ("show work_mem", "1234kB"),
            ("show statement_timeout", "4321ms"),
        ],
    ));
    cases.push(upstream_refusal(
        "very long database name",
        startup(&[("user", "app"), ("database", &"d".repeat(5000))]),
        "3D000",
        &format!("database \"{}\" does not exist", "d".repeat(63)),
    ));
    cases.push(upstream_refusal(
        "non-UTF-8 database name",
        packet(
            V3_0,
            &params(&[(b"user", b"app"), (b"database", b"caf\xe9")]),
        ),
        "3D000",
        "database \"caf",
    ));
    cases.push(upstream_refusal(
        "unknown parameter",
        startup_with(&[(b"hostile_guc", b"1")]),
        "42704",
        "unrecognized configuration parameter \"hostile_guc\"",
    ));
    cases.push(upstream_refusal(
        "replication=database",
        startup_with(&[(b"replication", b"database")]),
        "53300",
        "number of requested standby connections exceeds max_wal_senders",
    ));

    // Messages where the opening belongs.
    cases.push(fatal(
        "Query before the startup",
        query("select 1"),
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "Terminate before the startup",
        terminate(),
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "HTTP request",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        "08P01",
        LEN,
        Silent,
    ));
    // Random bytes: a random length word is out of range (checked: the first four bytes).
    for seed in 1..=4u64 {
        let bytes = random_bytes(seed, 512);
        assert!(
            bytes[0] != 0x16 && bytes[0] != 0,
            "seed {seed}: pick another"
        );
        cases.push(fatal(
            &format!("random bytes, seed {seed}"),
            bytes,
            "08P01",
            LEN,
            Silent,
        ));
    }
    // A valid length word, then random bytes: a random protocol version.
    for seed in 5..=8u64 {
        let body = random_bytes(seed, 60);
        assert!(
            body[0] != 0 && body[0] != 3 && body[0] != 0x04,
            "seed {seed}: pick another"
        );
        let mut bytes = 64u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        cases.push(fatal(
            &format!("length word then random bytes, seed {seed}"),
            bytes,
            "0A000",
            PROTO,
            Same,
        ));
    }
}

/// A StartupMessage asking for protocol `version` (1.x, 2.x): refused in protocol 2's error
/// format, as PostgreSQL refuses it (compared byte for byte but for the versions it names).
fn protocol_2(name: &str, version: u32) -> Case<Pg> {
    let bytes = Arc::new(packet(version, &params(&[(b"user", b"app")])));
    case(name, move |ctx: Arc<Pg>| {
        let bytes = bytes.clone();
        async move {
            let v = format!("{}.{}", version >> 16, version & 0xffff);
            let got = exchange(ctx.tls, &bytes).await?;
            let want = format!(
                "EFATAL:  unsupported frontend protocol {v}: server supports 3.0 to 3.2\n\0"
            );
            ensure!(
                got == want.as_bytes(),
                "got {:?}",
                String::from_utf8_lossy(&got)
            );
            let direct = exchange(ctx.direct, &bytes).await?;
            let want = format!(
                "EFATAL:  unsupported frontend protocol {v}: server supports 3.0 to 3.0\n\0"
            );
            ensure!(
                direct == want.as_bytes(),
                "PostgreSQL itself: {:?}",
                String::from_utf8_lossy(&direct)
            );
            Ok(())
        }
    })
}

/// `bytes` as the opening: the server's own refusal (`code`, message starting with `prefix`)
/// reaches the client verbatim.
fn upstream_refusal(name: &str, bytes: Vec<u8>, code: &'static str, prefix: &str) -> Case<Pg> {
    let (bytes, prefix) = (Arc::new(bytes), Arc::new(prefix.to_owned()));
    case(name, move |ctx: Arc<Pg>| {
        let (bytes, prefix) = (bytes.clone(), prefix.clone());
        async move {
            let got = exchange(ctx.tls, &bytes).await?;
            let (msgs, _) = messages(&got);
            let Some((b'E', e)) = msgs.last() else {
                return Err(format!("no ErrorResponse: {}", describe(&got)));
            };
            let (c, m) = (field(e, b'C'), field(e, b'M'));
            ensure!(
                c == code && m.starts_with(prefix.as_str()),
                "got {c} {m:?}, expected {code} {prefix:?}…"
            );
            Ok(())
        }
    })
}

/// A TLS client trusting the CA certificates in `pem_file`.
fn tls_client(pem_file: &std::path::Path) -> TlsConnector {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// SSLRequest, 'S', then the TLS handshake.
async fn tls_after_ssl_request(
    addr: SocketAddr,
    tls: &TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut s = connect(addr).await?;
    s.write_all(&SSL_REQUEST).await.map_err(|e| e.to_string())?;
    let answer = read_n(&mut s, 1, LIMIT).await?;
    ensure!(answer == b"S", "SSLRequest answered {answer:?}");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tls.connect(name, s)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// Opens TLS with an SSLRequest, then sends `inside` over TLS: one FATAL `code` from the
/// proxy; from PostgreSQL itself the same, or (`same` false: a COMMERROR) a silent close.
fn inside_tls(
    name: &str,
    inside: Vec<u8>,
    code: &'static str,
    prefix: &'static str,
    same: bool,
) -> Case<Pg> {
    let inside = Arc::new(inside);
    case(name, move |ctx: Arc<Pg>| {
        let inside = inside.clone();
        async move {
            for (who, addr, tls) in [
                ("proxy", ctx.tls, &ctx.to_proxy),
                ("PostgreSQL itself", ctx.direct, &ctx.to_pg),
            ] {
                let mut s = tls_after_ssl_request(addr, tls).await?;
                let _ = s.write_all(&inside).await;
                let got = read_to_close(&mut s, LIMIT).await?;
                if !same && addr == ctx.direct {
                    ensure!(got.is_empty(), "{who}: {}", describe(&got));
                    continue;
                }
                let (c, m) = single_fatal(&got).map_err(|e| format!("{who}: {e}"))?;
                ensure!(
                    c == code && m.starts_with(prefix),
                    "{who}: got {c} {m:?}, expected {code} {prefix:?}…"
                );
            }
            Ok(())
        }
    })
}

/// Sends `steps` one at a time on `listener` (plain: TLS disabled), each followed by the
/// one-byte answer it must get; then `last`, answered by one FATAL `code` (PostgreSQL itself
/// too, when `direct`).
fn negotiation(
    name: &str,
    plain: bool,
    steps: &'static [(&'static [u8], u8)],
    last: &'static [u8],
    code: &'static str,
    prefix: &'static str,
    direct: bool,
) -> Case<Pg> {
    case(name, move |ctx: Arc<Pg>| async move {
        let mut targets = vec![("proxy", if plain { ctx.plain } else { ctx.tls })];
        if direct {
            targets.push(("PostgreSQL itself", ctx.direct));
        }
        for (who, addr) in targets {
            let mut s = connect(addr).await?;
            for (bytes, answer) in steps {
                s.write_all(bytes).await.map_err(|e| e.to_string())?;
                let got = read_n(&mut s, 1, LIMIT)
                    .await
                    .map_err(|e| format!("{who}: {e}"))?;
                ensure!(
                    got == [*answer],
                    "{who}: answered {:?}, expected {:?}",
                    got[0] as char,
                    *answer as char
                );
            }
            let _ = s.write_all(last).await;
            let got = read_to_close(&mut s, LIMIT).await?;
            let (c, m) = single_fatal(&got).map_err(|e| format!("{who}: {e}"))?;
            ensure!(
                c == code && m.starts_with(prefix),
                "{who}: got {c} {m:?}, expected {code} {prefix:?}…"
            );
        }
        Ok(())
    })
}

fn negotiation_cases(cases: &mut Vec<Case<Pg>>) {
    const SSL: &[u8] = &SSL_REQUEST;
    const GSS: &[u8] = &GSSENC_REQUEST;
    const PROTO: &str = "unsupported frontend protocol 1234.";
    // PostgreSQL allows each request once (an SSLRequest again after a GSSENCRequest was
    // refused); another is read as a StartupMessage of protocol 1234.5679 / 1234.5680.
    // (Not compared: this PostgreSQL, built with GSSAPI, answers 'G' and waits for GSS tokens.)
    cases.push(negotiation(
        "GSSENCRequest twice",
        true,
        &[(GSS, b'N')],
        GSS,
        "0A000",
        PROTO,
        false,
    ));
    cases.push(negotiation(
        "GSSENCRequest twice (TLS offered)",
        false,
        &[(GSS, b'N')],
        GSS,
        "0A000",
        PROTO,
        false,
    ));
    cases.push(negotiation(
        "SSLRequest twice (TLS disabled)",
        true,
        &[(SSL, b'N')],
        SSL,
        "0A000",
        PROTO,
        false,
    ));

    cases.push(inside_tls(
        "SSLRequest inside TLS",
        SSL_REQUEST.to_vec(),
        "0A000",
        PROTO,
        true,
    ));
    cases.push(inside_tls(
        "GSSENCRequest inside TLS",
        GSSENC_REQUEST.to_vec(),
        "0A000",
        PROTO,
        true,
    ));
    cases.push(inside_tls(
        "bad length inside TLS",
        vec![0, 0, 0, 1],
        "08P01",
        "invalid length of startup packet",
        false,
    ));
    // Bytes behind an encryption request, before its answer (CVE-2021-23214).
    let mut ssl_garbage = SSL_REQUEST.to_vec();
    ssl_garbage.extend_from_slice(&startup(&[("user", "app")]));
    cases.push(fatal(
        "SSLRequest with a startup behind it",
        ssl_garbage,
        "08P01",
        "",
        Direct::No,
    ));
    let mut gss_garbage = GSSENC_REQUEST.to_vec();
    gss_garbage.extend_from_slice(b"garbage");
    cases.push(fatal(
        "GSSENCRequest with garbage behind it",
        gss_garbage,
        "08P01",
        "",
        Direct::No,
    ));
    // Refused encryption, then a plain startup.
    let ok = startup(&[("user", "app"), ("database", DB)]);
    cases.push(after_answers(
        "SSLRequest 'N', then a plain startup (TLS disabled)",
        true,
        &[(SSL, b'N')],
        ok.clone(),
    ));
    cases.push(after_answers(
        "GSSENCRequest 'N', then a startup",
        false,
        &[(GSS, b'N')],
        ok.clone(),
    ));
    cases.push(after_answers(
        "GSSENCRequest, SSLRequest 'N', then a startup (TLS disabled)",
        true,
        &[(GSS, b'N'), (SSL, b'N')],
        ok.clone(),
    ));
    // A refused request allows the other one again (PostgreSQL's ssl_done / gss_done).
    cases.push(after_answers(
        "SSLRequest, GSSENCRequest, SSLRequest, GSSENCRequest, startup (TLS disabled)",
        true,
        &[(SSL, b'N'), (GSS, b'N'), (SSL, b'N'), (GSS, b'N')],
        ok.clone(),
    ));
    // TLS offered: 'S', then a client that does not do TLS.
    let plain_startup = Arc::new(ok.clone());
    cases.push(case(
        "SSLRequest 'S', then a plain startup",
        move |ctx: Arc<Pg>| {
            let bytes = plain_startup.clone();
            async move {
                let mut s = connect(ctx.tls).await?;
                s.write_all(&SSL_REQUEST).await.map_err(|e| e.to_string())?;
                ensure!(read_n(&mut s, 1, LIMIT).await? == b"S", "not 'S'");
                let _ = s.write_all(&bytes).await;
                let rest = read_to_close(&mut s, LIMIT).await?;
                // A TLS alert at most (content type 21), never PostgreSQL bytes in the clear.
                ensure!(
                    rest.is_empty() || rest[0] == 21,
                    "after 'S': {}",
                    describe(&rest)
                );
                Ok(())
            }
        },
    ));
    cases.push(case(
        "SSLRequest, then EOF (half-open)",
        |ctx: Arc<Pg>| async move {
            let mut s = connect(ctx.tls).await?;
            s.write_all(&SSL_REQUEST).await.map_err(|e| e.to_string())?;
            let _ = s.shutdown().await;
            let got = read_to_close(&mut s, LIMIT).await?;
            ensure!(got == b"S", "got {got:?}");
            Ok(())
        },
    ));
    cases.push(case(
        "SSLRequest, TLS, startup",
        |ctx: Arc<Pg>| async move {
            let mut s = tls_after_ssl_request(ctx.tls, &ctx.to_proxy).await?;
            s.write_all(&startup(&[("user", "app"), ("database", DB)]))
                .await
                .map_err(|e| e.to_string())?;
            read_until(&mut s, b'Z', 1, LIMIT).await?;
            logged_in(&mut s, &[("select 1", "1")]).await
        },
    ));
}

/// Encryption requests answered one by one, then `startup`: logged in.
fn after_answers(
    name: &str,
    plain: bool,
    steps: &'static [(&'static [u8], u8)],
    startup: Vec<u8>,
) -> Case<Pg> {
    let startup = Arc::new(startup);
    case(name, move |ctx: Arc<Pg>| {
        let startup = startup.clone();
        async move {
            let mut s = connect(if plain { ctx.plain } else { ctx.tls }).await?;
            for (bytes, answer) in steps {
                s.write_all(bytes).await.map_err(|e| e.to_string())?;
                let got = read_n(&mut s, 1, LIMIT).await?;
                ensure!(
                    got == [*answer],
                    "answered {:?}, expected {:?}",
                    got[0] as char,
                    *answer as char
                );
            }
            s.write_all(&startup).await.map_err(|e| e.to_string())?;
            read_until(&mut s, b'Z', 1, LIMIT).await?;
            logged_in(&mut s, &[("select 1", "1")]).await
        }
    })
}

/// Sends `bytes`, closes the write side, reads to the close: nothing comes back (the proxy,
/// and PostgreSQL itself when `direct`).
fn half_open_silent(name: &str, bytes: Vec<u8>, direct: bool) -> Case<Pg> {
    let bytes = Arc::new(bytes);
    case(name, move |ctx: Arc<Pg>| {
        let bytes = bytes.clone();
        async move {
            let mut targets = vec![("proxy", ctx.tls)];
            if direct {
                targets.push(("PostgreSQL itself", ctx.direct));
            }
            for (who, addr) in targets {
                let mut s = connect(addr).await?;
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
                let got = read_to_close(&mut s, LIMIT).await?;
                ensure!(got.is_empty(), "{who}: {}", describe(&got));
            }
            Ok(())
        }
    })
}

fn socket_cases(cases: &mut Vec<Case<Pg>>) {
    let ok = startup(&[("user", "app"), ("database", DB)]);
    cases.push(half_open_silent(
        "half-open: half a length word",
        vec![0, 0],
        true,
    ));
    cases.push(half_open_silent(
        "half-open: half a startup",
        ok[..ok.len() / 2].to_vec(),
        true,
    ));
    cases.push(half_open_silent("half-open: nothing", vec![], true));
    let whole = Arc::new(ok.clone());
    cases.push(case("half-open: a whole startup", move |ctx: Arc<Pg>| {
        let whole = whole.clone();
        async move {
            let mut s = connect(ctx.tls).await?;
            s.write_all(&whole).await.map_err(|e| e.to_string())?;
            let _ = s.shutdown().await;
            // Logged in; the client's EOF then ends the session (nothing lost, nothing hangs).
            let got = read_to_close(&mut s, LIMIT).await?;
            let (msgs, rest) = messages(&got);
            let tags: String = msgs.iter().map(|(t, _)| *t as char).collect();
            ensure!(
                tags.starts_with('R') && tags.ends_with('Z') && rest.is_empty(),
                "got {}",
                describe(&got)
            );
            Ok(())
        }
    }));
    cases.push(case("silent client", |ctx: Arc<Pg>| async move {
        let mut s = connect(ctx.tls).await?;
        let got = read_to_close(&mut s, LIMIT).await?;
        ensure!(got.is_empty(), "got {}", describe(&got));
        Ok(())
    }));
    let slow = Arc::new(ok.clone());
    cases.push(case("slowloris: a byte a second", move |ctx: Arc<Pg>| {
        let slow = slow.clone();
        async move {
            let s = connect(ctx.tls).await?;
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                for b in slow.iter() {
                    if w.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            // The handshake timeout ends it, without an answer (nothing to tell a client that
            // never finished its startup), long before the packet is complete.
            let got = read_to_close(&mut r, LIMIT).await?;
            writer.abort();
            ensure!(got.is_empty(), "got {}", describe(&got));
            Ok(())
        }
    }));
    // Pipelining: bytes behind the StartupMessage are kept and reach the server.
    let mut pipelined = ok.clone();
    pipelined.extend_from_slice(&query("SELECT 41 + 1"));
    pipelined.extend_from_slice(&terminate());
    let pipelined = Arc::new(pipelined);
    cases.push(case(
        "a query and Terminate pipelined behind the startup",
        move |ctx: Arc<Pg>| {
            let bytes = pipelined.clone();
            async move {
                let got = exchange(ctx.tls, &bytes).await?;
                let (msgs, rest) = messages(&got);
                let tags: String = msgs.iter().map(|(t, _)| *t as char).collect();
                let after_login = tags
                    .split_once('Z')
                    .map(|(_, a)| a.to_owned())
                    .unwrap_or_default();
                ensure!(
                    after_login == "TDCZ" && rest.is_empty(),
                    "got {}",
                    describe(&got)
                );
                let row = &msgs.iter().find(|(t, _)| *t == b'D').unwrap().1;
                ensure!(row.ends_with(b"42"), "row {row:?}");
                Ok(())
            }
        },
    ));
    let mut garbage = ok.clone();
    garbage.extend_from_slice(b"\x01garbage!");
    cases.push(upstream_refusal(
        "garbage behind the startup",
        garbage,
        "08P01",
        "invalid frontend message type 1",
    ));
    // Many logins at once.
    let many = Arc::new(ok);
    cases.push(case("30 logins at once", move |ctx: Arc<Pg>| {
        let many = many.clone();
        async move {
            let logins = (0..30).map(|_| {
                let (many, addr) = (many.clone(), ctx.tls);
                async move {
                    let mut s = connect(addr).await?;
                    s.write_all(&many).await.map_err(|e| e.to_string())?;
                    read_until(&mut s, b'Z', 1, LIMIT).await?;
                    logged_in(&mut s, &[]).await
                }
            });
            let failed: Vec<String> = futures_util::future::join_all(logins)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            ensure!(
                failed.is_empty(),
                "{} of 30 failed: {failed:?}",
                failed.len()
            );
            Ok(())
        }
    }));
}

/// What the storm's connections send before they close (or reset).
fn storm_prefix(i: usize) -> Vec<u8> {
    match i % 6 {
        0 => vec![],
        1 => vec![0, 0],
        2 => SSL_REQUEST.to_vec(),
        3 => GSSENC_REQUEST.to_vec(),
        4 => startup(&[("user", "app"), ("database", DB)]),
        _ => random_bytes(i as u64, 64),
    }
}

/// The role the TLS-disabled proxy logs in as.
const PLAIN_USER: &str = "aad_plain-app";

/// A proxy command for `s`'s PostgreSQL logging in as [`PLAIN_USER`] with tokens from a fake
/// Entra of its own (kept alive by the returned value).
async fn second_identity(s: &Stack) -> (crate::util::ProxyCmd, dbproxy_testkit::azure::FakeAzure) {
    use dbproxy_testkit::{
        azure::{FakeAzure, FakeAzureConfig},
        certs::TestCa,
    };
    let ca = TestCa::new("hostile second entra");
    let azure = FakeAzure::start(&ca, FakeAzureConfig::default())
        .await
        .unwrap();
    s.pg.set_role_password(PLAIN_USER, &dbproxy_testkit::tokens::random_b64url(24))
        .await
        .unwrap();
    azure.sync_pg_role_password(s.pg.clone(), PLAIN_USER, stack::PG_RESOURCE);
    let bundle = s.dir.join("hostile-cas.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(&s.ca_file).unwrap() + &ca.ca_pem(),
    )
    .unwrap();
    let cfg = azure.config();
    let cmd = crate::util::ProxyCmd::new()
        .args(["--postgres-listen", "127.0.0.1:0"])
        .args(["--postgres-upstream", &format!("127.0.0.1:{}", s.pg.port())])
        .args(["--postgres-user", PLAIN_USER, "--postgres-database", DB])
        .env("SSL_CERT_FILE", bundle.to_str().unwrap())
        .env("AZURE_AUTHORITY_HOST", azure.authority_host())
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", s.silent_imds_url())
        .env("AZURE_POSTGRESQL_CLIENTID", cfg.client_id)
        .env("AZURE_POSTGRESQL_CLIENTSECRET", cfg.client_secret)
        .env("AZURE_POSTGRESQL_TENANTID", cfg.tenant_id);
    (cmd, azure)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_postgres_clients_get_exact_answers_while_others_work() {
    let s = Stack::start().await;
    let (cert, key, local_ca) = s.local_tls_files();
    let base = s
        .proxy_sp()
        .args(["--handshake-timeout", "3s", "--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&[FAILED_SESSION]);
    let tls = base
        .args(["--client-tls-cert", cert.to_str().unwrap()])
        .args(["--client-tls-key", key.to_str().unwrap()])
        .spawn();
    // The fake Entra sets the role's password to the token it issued last, so two proxies
    // sharing it would refuse each other's tokens: the second logs in as a role of its own,
    // with a fake Entra of its own.
    let (plain_cmd, _plain_azure) = second_identity(&s).await;
    let plain = plain_cmd
        .args(["--handshake-timeout", "3s", "--admin-listen", "127.0.0.1:0"])
        .args(["--client-tls-mode", "disable"])
        .expect_warnings(&[FAILED_SESSION])
        .spawn();
    let ctx = Arc::new(Pg {
        tls: tls.addr(),
        plain: plain.addr(),
        direct: SocketAddr::from(([127, 0, 0, 1], s.pg.port())),
        to_proxy: tls_client(&local_ca),
        to_pg: tls_client(&s.ca_file),
    });
    let admins = [tls.admin.unwrap(), plain.admin.unwrap()];

    // The unrelated session, on the proxy most cases use.
    let client = Arc::new(stack::connect(tls.port()).await.unwrap());
    let background = Background::start(move |i| {
        let client = client.clone();
        async move {
            let i = i as i32;
            let row = client
                .query_one("select $1::int + 1", &[&i])
                .await
                .map_err(|e| format!("{e:#}"))?;
            let got: i32 = row.get(0);
            if got == i + 1 {
                Ok(())
            } else {
                Err(format!("{i} + 1 = {got}"))
            }
        }
    });

    let mut cases = Vec::new();
    opening_cases(&mut cases);
    negotiation_cases(&mut cases);
    socket_cases(&mut cases);
    let n = cases.len();
    let started = std::time::Instant::now();
    let mut failures = run_cases(ctx.clone(), cases, LIMIT + HANDSHAKE, 16).await;
    let table_time = started.elapsed();

    // Connect/close storms on both proxies; then every session is gone.
    for proxy in [&tls, &plain] {
        storm(proxy.addr(), 500, storm_prefix).await;
    }
    for (admin, baseline) in admins.iter().zip([1.0, 0.0]) {
        if let Err(e) = wait_active(*admin, baseline, LIMIT).await {
            failures.push(format!("connect/close storm: {e}"));
        }
    }
    match background.finish(20).await {
        Ok(q) => eprintln!("{n} cases in {table_time:?}; the unrelated session ran {q} queries"),
        Err(e) => failures.push(e),
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
