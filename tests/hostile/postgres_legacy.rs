//! Hostile clients that need a proxy of their own: strings that try to forge log lines (in
//! both log formats), refusals in a loop that must cost no Entra ID request, and a token the
//! server refuses in a loop (at most one new token per 10 s).

use std::time::Duration;

use dbproxy_testkit::{azure::FakeAzureConfig, postgres::PgOptions};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::pg_wire::{field, read_until, startup};
use crate::stack::{self, ENTRA_USER, FAILED_SESSION, Stack, db_error};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn hostile_startup_strings_cannot_forge_log_lines() {
    let s = Stack::start().await;
    let forged = "x\nERROR forged: level=ERROR msg=\"pwned\" \u{1b}[31m";
    for format in ["text", "json"] {
        // The refusal is a failed session; the forged value shows (escaped) in debug lines.
        let mut proxy = s
            .proxy_sp()
            .args(["--log-format", format])
            .expect_warnings(&[FAILED_SESSION, "outcome=failed", "ERROR forged"])
            .spawn();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let database = format!("{forged} db");
        let bytes = startup(&[
            ("user", forged),
            ("database", &database),
            ("application_name", forged),
        ]);
        c.write_all(&bytes).await.unwrap();
        // The database does not exist: the server's refusal reaches the client.
        let got = read_until(&mut c, b'E', 1, LIMIT).await.unwrap();
        assert_eq!(field(&got.last().unwrap().1, b'C'), "3D000");
        drop(c);
        proxy.wait_for_line(|l| l.contains("session ended"), LIMIT);
        for line in proxy.lines() {
            assert!(
                !line.starts_with("ERROR forged"),
                "{format}: forged line {line:?}"
            );
            assert!(!line.contains('\u{1b}'), "{format}: raw escape in {line:?}");
            if format == "json" {
                serde_json::from_str::<serde_json::Value>(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            }
        }
        assert!(
            proxy.log().contains("ERROR forged"),
            "the value is logged, escaped"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_that_are_not_about_the_token_cost_no_entra_request() {
    let options = PgOptions {
        extra_hba: vec!["hostssl forbidden all 127.0.0.1/32 reject".into()],
        ..Default::default()
    };
    let s = Stack::with_pg(options, FakeAzureConfig::default()).await;
    s.pg.create_database("forbidden", ENTRA_USER).await.unwrap();
    let proxy = s.proxy_sp().expect_warnings(&[FAILED_SESSION]).spawn();
    stack::connect(proxy.port())
        .await
        .unwrap()
        .simple_query("select 1")
        .await
        .unwrap();
    let tokens_before = s.azure.issued().len();
    for _ in 0..10 {
        let err = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(proxy.port())
            .user("app")
            .dbname("forbidden")
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .expect("pg_hba rejects this database");
        let (code, message) = db_error(&err);
        assert_eq!(code, "28000", "{message}");
        assert!(
            message.starts_with(&format!(
                "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"{ENTRA_USER}\", database \"forbidden\""
            )),
            "the server's own message: {message}"
        );
    }
    assert_eq!(
        s.azure.issued().len(),
        tokens_before,
        "no token was fetched for refusals of another kind"
    );
    // The listener still serves.
    stack::connect(proxy.port())
        .await
        .unwrap()
        .simple_query("select 1")
        .await
        .unwrap();
}

/// The server refuses every token (the role's password changed behind the proxy's back): a
/// client reconnecting in a loop makes the proxy drop its token and fetch another at most once
/// per 10 s, however fast the client loops, and every attempt gets the server's refusal.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_refused_in_a_loop_costs_at_most_one_entra_request_per_10_s() {
    let s = Stack::start().await;
    let proxy = s
        .proxy_sp()
        .expect_warnings(&[
            FAILED_SESSION,
            "the upstream refused the credential; retrying with a fresh one",
            "the database rejected the access token again within 10 s",
        ])
        .spawn();
    stack::connect(proxy.port())
        .await
        .unwrap()
        .simple_query("select 1")
        .await
        .unwrap();
    s.azure.clear_on_issue();
    s.pg.set_role_password(ENTRA_USER, &dbproxy_testkit::tokens::random_b64url(24))
        .await
        .unwrap();
    let before = s.azure.issued().len();
    let started = std::time::Instant::now();
    for i in 0..20 {
        let err = stack::connect(proxy.port())
            .await
            .err()
            .unwrap_or_else(|| panic!("attempt {i}: the refused token logged in"));
        let (code, message) = db_error(&err);
        assert_eq!(code, "28P01", "attempt {i}: {message}");
    }
    let fetched = s.azure.issued().len() - before;
    let windows = 1 + started.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=windows).contains(&fetched),
        "{fetched} tokens fetched for 20 refusals in {:?} (at most one per 10 s)",
        started.elapsed()
    );
}
