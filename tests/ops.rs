//! Running it in production: probes, metrics, the connection cap, `check`, idle sessions,
//! graceful shutdown.

use std::time::{Duration, Instant};

use crate::{
    stack::{self, DB, ENTRA_USER, FAILED_SESSION, Stack, db_error, psql},
    util::{ProxyCmd, http_get},
};

async fn wait_status(
    addr: std::net::SocketAddr,
    path: &str,
    want: u16,
    within: Duration,
) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = http_get(addr, path).await;
        if status == want {
            return body;
        }
        assert!(
            start.elapsed() < within,
            "{path} stayed {status} ({body}), wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_follow_credentials_and_shutdown() {
    let s = Stack::start().await;
    s.azure.set_down(true);
    let mut proxy = s
        .proxy_sp()
        .args(["--admin-listen", "127.0.0.1:0", "--min-shutdown-delay", "3"])
        .expect_warnings(&["access token acquisition failed"])
        .spawn();
    let admin = proxy.admin.expect("admin address in the log");
    // Before the first credential: alive, not started, not ready.
    assert_eq!(http_get(admin, "/liveness").await.0, 200);
    let (status, body) = http_get(admin, "/startup").await;
    assert_eq!(status, 503);
    assert!(body.contains("no credential acquired yet"), "{body}");
    assert_eq!(http_get(admin, "/readiness").await.0, 503);

    s.azure.set_down(false);
    wait_status(admin, "/startup", 200, Duration::from_secs(60)).await;
    wait_status(admin, "/readiness", 200, Duration::from_secs(5)).await;

    // SIGTERM: readiness fails at once, but new connections are still served during the
    // minimum delay, then the proxy exits 0.
    proxy.signal_term();
    let body = wait_status(admin, "/readiness", 503, Duration::from_secs(2)).await;
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(psql(proxy.port(), "select 1").trim(), "1");
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(0));
}

/// Entra down past the token's expiry: readiness fails, and comes back with Entra.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_when_the_token_expires_with_entra_down() {
    let cfg = dbproxy_testkit::azure::FakeAzureConfig {
        lifetime: Duration::from_secs(15),
        ..Default::default()
    };
    let s = Stack::with(dbproxy_testkit::postgres::PasswordAuth::Password, cfg).await;
    let proxy = s
        .proxy_sp()
        .args(["--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&["access token acquisition failed"])
        .spawn();
    let admin = proxy.admin.unwrap();
    wait_status(admin, "/readiness", 200, Duration::from_secs(20)).await;
    s.azure.set_down(true);
    // The 15 s token counts as expired 10 s before its end.
    let body = wait_status(admin, "/readiness", 503, Duration::from_secs(30)).await;
    assert!(body.contains("not valid"), "{body}");
    assert_eq!(http_get(admin, "/liveness").await.0, 200);
    assert_eq!(
        http_get(admin, "/startup").await.0,
        200,
        "started stays started"
    );
    s.azure.set_down(false);
    wait_status(admin, "/readiness", 200, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_with_sessions() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().args(["--admin-listen", "127.0.0.1:0"]).spawn();
    let admin = proxy.admin.unwrap();
    assert_eq!(
        psql(proxy.port(), "select repeat('x', 10000)").trim().len(),
        10000
    );
    let _ = stack::connect(proxy.port()).await.unwrap();
    // A session records its handshake just after the client has ReadyForQuery (on its session
    // thread): wait for the second one rather than race it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (status, text) = loop {
        let (status, text) = http_get(admin, "/metrics").await;
        let handshakes = text
            .lines()
            .find_map(|l| l.strip_prefix("entra_db_proxy_handshake_duration_seconds_count"))
            .and_then(|rest| rest.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if status != 200 || handshakes >= 2.0 || std::time::Instant::now() > deadline {
            break (status, text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200);

    // Parse it with the reference Python parser (OpenMetrics text).
    let python = crate::clients::python();
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
values = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        if s.name.endswith(("_total", "_count", "_seconds")) or s.name.endswith("_active"):
            values[(s.name, s.labels.get("cause", ""))] = values.get((s.name, s.labels.get("cause", "")), 0) + s.value
for (name, cause), v in sorted(values.items()):
    print(f"{name}|{cause}|{v}")
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the metrics do not parse:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |name: &str| -> f64 {
        parsed
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name}||"))
                    .map(|v| v.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("{name} missing:\n{parsed}"))
    };
    assert!(value("entra_db_proxy_connections_total") >= 2.0, "{parsed}");
    assert!(
        value("entra_db_proxy_client_bytes_total") >= 10_000.0,
        "{parsed}"
    );
    assert!(
        value("entra_db_proxy_upstream_bytes_total") > 0.0,
        "{parsed}"
    );
    assert!(
        value("entra_db_proxy_handshake_duration_seconds_count") >= 2.0,
        "{parsed}"
    );
    assert!(
        value("entra_db_proxy_credential_refreshes_total") >= 1.0,
        "{parsed}"
    );
    assert!(
        value("entra_db_proxy_upstream_connect_duration_seconds_count") >= 2.0,
        "{parsed}"
    );
    assert!(
        text.contains("entra_db_proxy_credential_expiry_seconds{listener=\"postgres\"}"),
        "{text}"
    );
    // No secret in the metrics either.
    for t in s.azure.issued() {
        assert!(!text.contains(&t.token[t.token.len() - 40..]));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_cap_clients_get_53300() {
    let s = Stack::start().await;
    let proxy = s
        .proxy_sp()
        .args(["--max-connections", "2", "--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&["connection cap reached"])
        .spawn();
    let a = stack::connect(proxy.port()).await.unwrap();
    let b = stack::connect(proxy.port()).await.unwrap();
    let (code, message) = db_error(&stack::connect(proxy.port()).await.unwrap_err());
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("too many clients"), "{message}");
    let (status, body) = http_get(proxy.admin.unwrap(), "/readiness").await;
    assert_eq!(status, 503);
    assert!(body.contains("connection cap"), "{body}");
    // A freed slot is usable again.
    drop(a);
    let start = Instant::now();
    loop {
        match stack::connect(proxy.port()).await {
            Ok(c) => {
                c.simple_query("select 1").await.unwrap();
                break;
            }
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("slot never freed: {e:#}"),
        }
    }
    b.simple_query("select 1").await.unwrap();
    let (_, metrics) = http_get(proxy.admin.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("cause=\"too_many_connections\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_are_closed_when_asked() {
    let s = Stack::start().await;
    let mut proxy = s.proxy_sp().args(["--idle-timeout", "1"]).spawn();
    let c = stack::connect(proxy.port()).await.unwrap();
    c.simple_query("select 1").await.unwrap();
    proxy.wait_for_line(|l| l.contains("idle timeout"), Duration::from_secs(10));
    assert!(c.simple_query("select 1").await.is_err());
}

#[test]
fn check_reports_success_and_failure() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(Stack::start());
    let (code, out) = s.proxy_sp().arg("check").run_to_end();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("ok: logged in as {ENTRA_USER} to database {DB}")),
        "{out}"
    );

    // A stopped upstream: the table says what failed and the exit code is non-zero.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut cmd: ProxyCmd = s.proxy_sp();
    let i = cmd
        .args
        .iter()
        .position(|a| a == "--postgres-upstream")
        .unwrap();
    cmd.args[i + 1] = format!("127.0.0.1:{port}");
    let (code, out) = cmd.arg("check").run_to_end();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAILED") && out.contains("cannot connect"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_psql_session() {
    use std::os::unix::fs::PermissionsExt;
    let s = Stack::start().await;
    let dir = s.dir.join("sock");
    std::fs::create_dir_all(&dir).unwrap();
    // A stale socket from a previous run is replaced.
    let stale = dir.join(".s.PGSQL.5432");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut cmd = s.proxy_sp();
    let i = cmd
        .args
        .iter()
        .position(|a| a == "--postgres-listen")
        .unwrap();
    cmd.args[i + 1] = dir.to_str().unwrap().to_owned();
    let proxy = cmd.spawn();
    assert_eq!(proxy.unix["postgres"], stale);
    let mode = std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "owner-only by default");
    let mut psql = std::process::Command::new("psql");
    psql.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args([
            "-X",
            "-At",
            "-h",
            dir.to_str().unwrap(),
            "-U",
            "someone",
            "-d",
            DB,
        ])
        .args(["-c", "select current_user"]);
    let (ok, out, err) = crate::util::run(&mut psql);
    assert!(ok, "psql over the unix socket: {err}\n{}", proxy.log());
    assert_eq!(out.trim(), ENTRA_USER);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_to_the_proxy_with_verify_full_and_reload() {
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
        // The refused plain client; during the rotation a client may meet the old certificate,
        // and the files may be seen half-written.
        .expect_warnings(&[
            FAILED_SESSION,
            "local TLS certificate changed but does not load",
        ])
        .spawn();
    let psql = |mode: &str, root: &std::path::Path| {
        let mut cmd = std::process::Command::new("psql");
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGSSLMODE", mode)
            .env("PGSSLROOTCERT", root)
            .env("PGCONNECT_TIMEOUT", "10")
            .args([
                "-X",
                "-At",
                "-h",
                "localhost",
                "-p",
                &proxy.port().to_string(),
                "-U",
                "x",
                "-d",
                DB,
            ])
            .args(["-c", "select current_user"]);
        crate::util::run(&mut cmd)
    };
    let (ok, out, err) = psql("verify-full", &ca);
    assert!(ok, "verify-full to the proxy: {err}\n{}", proxy.log());
    assert_eq!(out.trim(), ENTRA_USER);
    let (ok, _, err) = psql("disable", &ca);
    assert!(!ok);
    assert!(err.contains("requires TLS"), "{err}");

    // Rotate the files in place: new connections get the new certificate.
    let next_ca = dbproxy_testkit::certs::TestCa::new("proxy local ca 2");
    let next = next_ca.server_cert(&["localhost", "127.0.0.1"]);
    let next_root = s.dir.join("local-ca-2.pem");
    next_ca.write_ca(&next_root);
    std::fs::write(&key, &next.key_pem).unwrap();
    std::fs::write(&cert, &next.cert_pem).unwrap();
    let start = Instant::now();
    loop {
        let (ok, out, err) = psql("verify-full", &next_root);
        if ok {
            assert_eq!(out.trim(), ENTRA_USER);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the new certificate was never served: {err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let s = Stack::start().await;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let mut cmd = s.proxy_sp();
    cmd.soft_nofile = Some(256.min(hard));
    let proxy = cmd.spawn();
    assert_eq!(proxy.open_files_limit(), (hard, hard));
    // Caps that need more than the limit are warned about.
    if hard < 1_000_000 {
        let mut cmd = s
            .proxy_sp()
            .args(["--max-connections", &hard.to_string()])
            .expect_warnings(&["need more open files than the limit allows"]);
        cmd.soft_nofile = Some(256.min(hard));
        let proxy = cmd.spawn();
        assert!(
            proxy
                .log()
                .contains("need more open files than the limit allows"),
            "{}",
            proxy.log()
        );
    }
}
