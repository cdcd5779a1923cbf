//! PostgreSQL 17's direct TLS (`sslnegotiation=direct`) with a real libpq 17+ (the one psycopg 3's
//! binary wheel bundles), ALPN `postgresql` on both negotiations, and startup values that are
//! not UTF-8, end to end against a real PostgreSQL.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    clients::python,
    stack::{DB, ENTRA_USER, FAILED_SESSION, Stack},
};

const LIMIT: Duration = Duration::from_secs(20);

/// Connects with psycopg 3 (its libpq must be 17 or newer) using `conninfo`, runs
/// `select current_user`, and prints `libpq=<version> user=<user>`.
const PSYCOPG: &str = r#"
import sys, psycopg
v = psycopg.pq.version()
if v < 170000:
    sys.exit(f"psycopg's libpq is {v}: sslnegotiation=direct needs 17 or newer")
with psycopg.connect(sys.argv[1], connect_timeout=10) as conn:
    user = conn.execute("select current_user").fetchone()[0]
    print(f"libpq={v} user={user}")
"#;

/// Runs [`PSYCOPG`]; returns (ok, stdout, stderr).
fn psycopg(conninfo: &str) -> (bool, String, String) {
    let python = python();
    let mut cmd = std::process::Command::new(&python);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["-c", PSYCOPG, conninfo]);
    crate::util::run(&mut cmd)
}

fn assert_logged_in(conninfo: &str, proxy_log: impl Fn() -> String) {
    let (ok, out, err) = psycopg(conninfo);
    assert!(
        ok,
        "psycopg with {conninfo:?} failed (scripts/install-deps.sh installs psycopg 3 and sets EDP_PYTHON):\n{err}\n{out}\n{}",
        proxy_log()
    );
    assert!(out.trim().ends_with(&format!("user={ENTRA_USER}")), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn libpq_17_direct_tls_with_the_self_signed_certificate() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let base = format!("host=127.0.0.1 port={} dbname={DB} user=app", proxy.port());
    assert_logged_in(
        &format!("{base} sslmode=require sslnegotiation=direct"),
        || proxy.log(),
    );
    assert!(
        proxy.log().contains("direct TLS accepted"),
        "the proxy saw a direct TLS opening:\n{}",
        proxy.log()
    );
    // libpq 17's default negotiation (SSLRequest, offering ALPN) still works.
    assert_logged_in(
        &format!("{base} sslmode=require sslnegotiation=postgres"),
        || proxy.log(),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn libpq_17_direct_tls_with_verify_full_against_the_proxys_ca() {
    let s = Stack::start().await;
    let (cert, key, ca) = s.local_tls_files();
    let proxy = s
        .proxy_sp()
        .args([
            "--client-tls-cert",
            cert.to_str().unwrap(),
            "--client-tls-key",
            key.to_str().unwrap(),
        ])
        .args(["--client-tls-mode", "require"])
        .spawn();
    assert_logged_in(
        &format!(
            "host=localhost port={} dbname={DB} user=app sslmode=verify-full sslrootcert={} sslnegotiation=direct",
            proxy.port(),
            ca.display()
        ),
        || proxy.log(),
    );
    assert!(proxy.log().contains("direct TLS accepted"));
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_tls_to_a_listener_without_client_tls_is_closed_not_hung() {
    let s = Stack::start().await;
    let proxy = s
        .proxy_sp()
        .args(["--client-tls-mode", "disable"])
        .expect_warnings(&[FAILED_SESSION])
        .spawn();
    let started = std::time::Instant::now();
    let (ok, out, err) = psycopg(&format!(
        "host=127.0.0.1 port={} dbname={DB} user=app sslmode=require sslnegotiation=direct",
        proxy.port()
    ));
    assert!(!ok, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "refused at once, not at the connect timeout: {err}"
    );
    let log = proxy.log();
    assert!(log.contains("client TLS disabled"), "{log}");
    assert!(log.contains(r#""cause":"client_tls""#), "{log}");
}

/// A bare TLS client (Python's ssl, OpenSSL) opening with its ClientHello, as direct TLS does,
/// offering the ALPN protocols in argv[2] (comma-separated, may be empty); prints what happened.
const BARE_TLS: &str = r#"
import socket, ssl, sys
port, alpn = int(sys.argv[1]), [p for p in sys.argv[2].split(",") if p]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if alpn:
    ctx.set_alpn_protocols(alpn)
with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
    try:
        s = ctx.wrap_socket(raw)
    except ssl.SSLError as e:
        print(f"handshake refused: {e}")
        sys.exit(0)
    print(f"handshake done alpn={s.selected_alpn_protocol()}")
    # A StartupMessage; then see what comes back.
    user = b"user\0app\0\0"
    s.sendall((8 + len(user)).to_bytes(4, "big") + (196608).to_bytes(4, "big") + user)
    try:
        data = s.recv(1)
        print("closed" if data == b"" else f"answered {data!r}")
    except (ssl.SSLError, OSError) as e:
        print(f"closed: {e}")
"#;

fn bare_tls(port: u16, alpn: &str) -> String {
    let python = python();
    let mut cmd = std::process::Command::new(&python);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["-c", BARE_TLS, &port.to_string(), alpn]);
    let (ok, out, err) = crate::util::run(&mut cmd);
    assert!(ok, "{err}\n{out}");
    out.trim().to_owned()
}

/// Over TCP with OpenSSL as the client, the answers PostgreSQL 17 gives: ALPN `postgresql`
/// selected; only other protocols offered: the handshake is refused (PostgreSQL sends the alert
/// `no_application_protocol`; rustls means to, but under TLS 1.3 the client sees the connection
/// end after the ServerHello); none offered: the handshake completes, then the connection is
/// closed without a message.
#[tokio::test(flavor = "multi_thread")]
async fn direct_tls_alpn_over_tcp_as_postgresql_17() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().expect_warnings(&[FAILED_SESSION]).spawn();
    let port = proxy.port();
    assert_eq!(
        bare_tls(port, "postgresql"),
        "handshake done alpn=postgresql\nanswered b'R'",
        "{}",
        proxy.log()
    );
    let refused = bare_tls(port, "h2,http/1.1");
    assert!(refused.starts_with("handshake refused"), "{refused}");
    let none = bare_tls(port, "");
    assert!(
        none.starts_with("handshake done alpn=None\nclosed"),
        "{none}"
    );
    let log = proxy.log();
    assert!(
        log.contains(
            "received direct SSL connection request without ALPN protocol negotiation extension"
        ),
        "{log}"
    );
}

/// A StartupMessage (protocol 3.0) with these parameters, bytes as given.
fn startup(params: &[(&[u8], &[u8])]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u32(196_608);
    for (k, v) in params {
        body.put_slice(k);
        body.put_u8(0);
        body.put_slice(v);
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32 + 4);
    out.extend_from_slice(&body);
    out
}

/// Reads backend messages up to the `n`th ReadyForQuery (or an ErrorResponse, or the end).
async fn read_until_ready(s: &mut TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let read = async {
        while out.iter().filter(|(t, _)| *t == b'Z').count() < n {
            let Ok(tag) = s.read_u8().await else { break };
            let len = s.read_u32().await.unwrap() as usize;
            let mut body = vec![0; len - 4];
            s.read_exact(&mut body).await.unwrap();
            let error = tag == b'E';
            out.push((tag, body));
            if error {
                break;
            }
        }
    };
    tokio::time::timeout(LIMIT, read).await.expect("no answer");
    out
}

/// The columns of a DataRow, as text.
fn columns(row: &[u8]) -> Vec<Vec<u8>> {
    let n = u16::from_be_bytes([row[0], row[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(row[at..at + 4].try_into().unwrap());
        at += 4;
        let len = usize::try_from(len).unwrap_or(0);
        out.push(row[at..at + len].to_vec());
        at += len;
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_utf8_application_name_reaches_postgresql_which_cleans_it() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    // Latin-1 "café" and a byte that is never UTF-8.
    c.write_all(&startup(&[
        (b"user", b"app"),
        (b"database", DB.as_bytes()),
        (b"application_name", b"caf\xe9\xff"),
    ]))
    .await
    .unwrap();
    let got = read_until_ready(&mut c, 1).await;
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags.last(), Some(&b'Z'), "logged in: {got:?}");
    let mut query = BytesMut::new();
    let sql =
        b"select current_setting('application_name'), current_setting('server_version_num')\0";
    query.put_u8(b'Q');
    query.put_u32(sql.len() as u32 + 4);
    query.put_slice(sql);
    c.write_all(&query).await.unwrap();
    let got = read_until_ready(&mut c, 1).await;
    let row = &got.iter().find(|(t, _)| *t == b'D').expect("a row").1;
    let cols = columns(row);
    let version: u32 = String::from_utf8_lossy(&cols[1]).parse().unwrap();
    // PostgreSQL keeps application_name ASCII itself: `?` for each non-ASCII byte up to 15,
    // `\xHH` escapes since 16 (check_application_name, pg_clean_ascii).
    let want: &[u8] = if version >= 160_000 {
        br"caf\xe9\xff"
    } else {
        b"caf??"
    };
    assert_eq!(
        String::from_utf8_lossy(&cols[0]),
        String::from_utf8_lossy(want),
        "server {version}"
    );
    let _ = c.write_all(&[b'X', 0, 0, 0, 4]).await;
}
