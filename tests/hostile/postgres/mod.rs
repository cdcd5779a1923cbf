//! The PostgreSQL table: one stack, two proxies (local TLS offered with a certificate of its
//! own, and local TLS disabled), every case at once, an unrelated tokio-postgres session
//! querying throughout. Where PostgreSQL answers the same bytes with an ErrorResponse, the
//! proxy must answer with the same SQLSTATE; where PostgreSQL closes without a word (its
//! COMMERROR cases: bad lengths, incomplete packets), the proxy tells the client why with 08P01
//! and closes.

mod negotiation;
mod opening;
mod sockets;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{
    Background, Case, Outcome, case, case_with, connect, ensure, pg_wire::*, random_bytes, read_n,
    read_to_close, run_cases, storm, wait_active,
};
use crate::stack::{self, DB, ENTRA_USER, FAILED_SESSION, Stack};

/// The proxies' handshake timeout: silent and slow clients end after it.
const HANDSHAKE: Duration = Duration::from_secs(5);

/// The generous bound on any one answer or close.
const LIMIT: Duration = Duration::from_secs(30);

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
    case_with(name, bytes, move |ctx: Arc<Pg>, bytes| async move {
        let got = exchange(ctx.tls, &bytes).await?;
        let (c, m) = single_fatal(&got)?;
        ensure!(
            c == code && m.starts_with(prefix),
            "got {c} {m:?}, expected {code} {prefix:?}…"
        );
        compare_direct(&ctx, &bytes, direct, code).await
    })
}

/// `bytes` as the opening: closed without an answer.
fn silent(name: &str, bytes: Vec<u8>, direct: Direct) -> Case<Pg> {
    case_with(name, bytes, move |ctx: Arc<Pg>, bytes| async move {
        let got = exchange(ctx.tls, &bytes).await?;
        ensure!(
            got.is_empty(),
            "expected a silent close, got {}",
            describe(&got)
        );
        compare_direct(&ctx, &bytes, direct, "").await
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
    case_with(name, bytes, move |ctx: Arc<Pg>, bytes| async move {
        let mut s = connect(if plain { ctx.plain } else { ctx.tls }).await?;
        s.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let msgs = read_until(&mut s, b'Z', 1, LIMIT).await?;
        let tags: String = msgs.iter().map(|(t, _)| *t as char).collect();
        ensure!(
            tags.starts_with(first),
            "login began {tags:?}, expected {first:?}…"
        );
        logged_in(&mut s, checks).await
    })
}

/// A StartupMessage for the test database with extra parameters.
fn startup_with(extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut pairs: Vec<(&[u8], &[u8])> = vec![(b"user", b"app"), (b"database", DB.as_bytes())];
    pairs.extend_from_slice(extra);
    packet(V3_0, &params(&pairs))
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
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--handshake-timeout", &format!("{}s", HANDSHAKE.as_secs())])
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
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--handshake-timeout", &format!("{}s", HANDSHAKE.as_secs())])
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
    opening::opening_cases(&mut cases);
    negotiation::negotiation_cases(&mut cases);
    sockets::socket_cases(&mut cases);
    let n = cases.len();
    let started = std::time::Instant::now();
    let during = background.done();
    let mut failures = run_cases(ctx.clone(), cases, LIMIT + HANDSHAKE, 16).await;
    if background.done() == during {
        failures.push("the unrelated session made no progress while the cases ran".into());
    }
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
