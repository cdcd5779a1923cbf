//! SSLRequest and GSSENCRequest: repeated, with bytes behind them, refused then a plain
//! startup, and requests inside TLS, each compared with PostgreSQL's ssl_done / gss_done rules.

use super::*;

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
    case_with(name, inside, move |ctx: Arc<Pg>, inside| async move {
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

pub(super) fn negotiation_cases(cases: &mut Vec<Case<Pg>>) {
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
        "received unencrypted data after SSL request",
        Direct::No,
    ));
    let mut gss_garbage = GSSENC_REQUEST.to_vec();
    gss_garbage.extend_from_slice(b"garbage");
    cases.push(fatal(
        "GSSENCRequest with garbage behind it",
        gss_garbage,
        "08P01",
        "received unencrypted data after GSSAPI encryption request",
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
    case_with(name, startup, move |ctx: Arc<Pg>, startup| async move {
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
    })
}
