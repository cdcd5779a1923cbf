//! A PostgreSQL stand-in for scale runs: enough of the server side of the protocol for a
//! proxy to log in and relay a simple query, and nothing more. It costs a few KB per session
//! where a real backend costs about 2 MB, so `bench/scale.sh` can hold 10,000 proxy sessions on
//! a machine that could not hold 10,000 PostgreSQL backends.
//!
//! Per connection: SSLRequest → `'S'` → TLS (the test CA's certificate); StartupMessage →
//! AuthenticationCleartextPassword (what Azure asks of Entra logins); the password is checked
//! with the caller's predicate (a refusal is PostgreSQL's FATAL 28P01); then AuthenticationOk,
//! the usual ParameterStatus messages, BackendKeyData and ReadyForQuery. Each simple Query is
//! answered with one row (`1`) and ReadyForQuery; Terminate or EOF ends the session. Anything
//! else gets an ErrorResponse (08P01) and the connection closes. Not a test of the proxy's
//! PostgreSQL conformance: the real server in [`super::PgServer`] is.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use bytes::{Buf, BufMut, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

use crate::certs::TestCa;

/// Decides whether a login's password is accepted.
pub type PasswordCheck = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// The stand-in server; dropping it stops accepting (open sessions end with their clients).
pub struct PgStandin {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl PgStandin {
    /// Listens on 127.0.0.1 (a free port) with a certificate for `127.0.0.1` and `localhost`.
    pub async fn start(ca: &TestCa, check: PasswordCheck) -> anyhow::Result<PgStandin> {
        let tls = TlsAcceptor::from(
            ca.try_server_cert(&["127.0.0.1", "localhost"])?
                .rustls_server_config()?,
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the PostgreSQL stand-in")?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            let mut next_pid = 1000i32;
            while let Ok((tcp, _)) = listener.accept().await {
                next_pid = next_pid.wrapping_add(1);
                let (tls, check) = (tls.clone(), check.clone());
                tokio::spawn(async move {
                    let _ = serve(tcp, tls, check, next_pid).await;
                });
            }
        });
        Ok(PgStandin { addr, accept })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for PgStandin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

const SSL_REQUEST: i32 = 80_877_103;
const PROTOCOL_3: i32 = 196_608;
/// PostgreSQL's own bound on a startup packet.
const MAX_STARTUP: usize = 10_000;
/// A bound on any later message (a query, a password).
const MAX_MESSAGE: usize = 1 << 20;

async fn serve(
    mut tcp: TcpStream,
    tls: TlsAcceptor,
    check: PasswordCheck,
    pid: i32,
) -> anyhow::Result<()> {
    let (len, code) = (tcp.read_i32().await?, tcp.read_i32().await?);
    anyhow::ensure!(
        len == 8 && code == SSL_REQUEST,
        "expected SSLRequest, got length {len} code {code}"
    );
    tcp.write_all(b"S").await?;
    let mut s = tls.accept(tcp).await?;

    let len = usize::try_from(s.read_i32().await?).unwrap_or(0);
    anyhow::ensure!((8..=MAX_STARTUP).contains(&len), "bad startup length {len}");
    let mut startup = vec![0; len - 4];
    s.read_exact(&mut startup).await?;
    let version = (&startup[..4]).get_i32();
    if version != PROTOCOL_3 {
        return fatal(&mut s, "0A000", "unsupported frontend protocol").await;
    }

    let mut out = BytesMut::new();
    message(&mut out, b'R', |b| b.put_i32(3));
    s.write_all(&out).await?;
    let (tag, password) = read_message(&mut s).await?;
    anyhow::ensure!(
        tag == b'p',
        "expected a PasswordMessage, got {:?}",
        tag as char
    );
    let password = password.strip_suffix(&[0]).unwrap_or(&password);
    if !check(password) {
        return fatal(&mut s, "28P01", "password authentication failed").await;
    }

    out.clear();
    message(&mut out, b'R', |b| b.put_i32(0));
    for (k, v) in [
        ("server_version", "15.0 (stand-in)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        message(&mut out, b'S', |b| {
            cstr(b, k);
            cstr(b, v);
        });
    }
    message(&mut out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(pid.wrapping_mul(7919));
    });
    ready(&mut out);
    s.write_all(&out).await?;

    loop {
        let (tag, _) = match read_message(&mut s).await {
            Ok(m) => m,
            Err(_) => return Ok(()), // EOF or a broken connection: the session is over
        };
        out.clear();
        match tag {
            b'Q' => {
                message(&mut out, b'T', |b| {
                    b.put_i16(1);
                    cstr(b, "?column?");
                    b.put_i32(0); // table oid
                    b.put_i16(0); // column number
                    b.put_i32(23); // int4
                    b.put_i16(4);
                    b.put_i32(-1);
                    b.put_i16(0); // text
                });
                message(&mut out, b'D', |b| {
                    b.put_i16(1);
                    b.put_i32(1);
                    b.put_u8(b'1');
                });
                message(&mut out, b'C', |b| cstr(b, "SELECT 1"));
                ready(&mut out);
                s.write_all(&out).await?;
            }
            b'X' => return Ok(()),
            other => {
                let text = format!("the stand-in does not serve message {:?}", other as char);
                return fatal(&mut s, "08P01", &text).await;
            }
        }
    }
}

async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> anyhow::Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = usize::try_from(s.read_i32().await?).unwrap_or(0);
    anyhow::ensure!((4..=MAX_MESSAGE).contains(&len), "bad message length {len}");
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

async fn fatal<S: AsyncWrite + Unpin>(s: &mut S, code: &str, text: &str) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    message(&mut out, b'E', |b| {
        for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', text)] {
            b.put_u8(field);
            cstr(b, value);
        }
        b.put_u8(0);
    });
    s.write_all(&out).await?;
    s.shutdown().await?;
    Ok(())
}

fn ready(out: &mut BytesMut) {
    message(out, b'Z', |b| b.put_u8(b'I'));
}

/// Appends a message: tag, then its body with the length in front.
fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = i32::try_from(out.len() - at).unwrap_or(i32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}
