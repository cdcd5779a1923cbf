//! The socket: half-open clients, silence, a byte a second, pipelining behind the startup,
//! many logins at once.

use super::*;

/// Sends `bytes`, closes the write side, reads to the close: nothing comes back (the proxy,
/// and PostgreSQL itself when `direct`).
fn half_open_silent(name: &str, bytes: Vec<u8>, direct: bool) -> Case<Pg> {
    case_with(name, bytes, move |ctx: Arc<Pg>, bytes| async move {
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
    })
}

pub(super) fn socket_cases(cases: &mut Vec<Case<Pg>>) {
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
