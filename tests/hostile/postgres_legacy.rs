//! Clients that do what clients should not: pipelining before the login is done, garbage,
//! hostile strings for the log, refusals in a loop. Each gets the protocol's answer, nothing
//! they sent is lost, and none of it costs the proxy or other clients anything.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use dbproxy_testkit::{azure::FakeAzureConfig, postgres::PgOptions};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::stack::{self, DB, ENTRA_USER, FAILED_SESSION, Stack, db_error};

const LIMIT: Duration = Duration::from_secs(20);

/// A StartupMessage (protocol 3.0) with these parameters.
fn startup(params: &[(&str, &str)]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u32(196_608);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32 + 4);
    out.extend_from_slice(&body);
    out
}

fn message(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
    out
}

/// Reads backend messages until `until` has been seen `n` times (or the server closes).
async fn read_messages(s: &mut TcpStream, until: u8, n: usize) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let read = async {
        while out.iter().filter(|(t, _)| *t == until).count() < n {
            let Ok(tag) = s.read_u8().await else { break };
            let len = s.read_u32().await.unwrap() as usize;
            let mut body = vec![0; len - 4];
            s.read_exact(&mut body).await.unwrap();
            out.push((tag, body));
        }
    };
    tokio::time::timeout(LIMIT, read).await.expect("no answer");
    out
}

fn field(body: &[u8], code: u8) -> String {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_pipelined_behind_the_startup_message_is_answered() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut bytes = startup(&[("user", "app"), ("database", DB)]);
    bytes.extend_from_slice(&message(b'Q', b"SELECT 41 + 1\0"));
    c.write_all(&bytes).await.unwrap();
    let got = read_messages(&mut c, b'Z', 2).await;
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    let after_login = &tags[tags.iter().position(|t| *t == b'Z').unwrap() + 1..];
    assert_eq!(
        after_login,
        b"TDCZ",
        "tags: {:?}",
        String::from_utf8_lossy(&tags)
    );
    let row = &got.iter().find(|(t, _)| *t == b'D').unwrap().1;
    assert_eq!(&row[row.len() - 2..], b"42");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_behind_the_startup_message_gets_the_servers_error() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut bytes = startup(&[("user", "app"), ("database", DB)]);
    bytes.extend_from_slice(b"\x01garbage!");
    c.write_all(&bytes).await.unwrap();
    let got = read_messages(&mut c, b'E', 1).await;
    let (tag, body) = got.last().unwrap();
    assert_eq!(*tag, b'E', "no error: {got:?}");
    assert_eq!(field(body, b'C'), "08P01", "{}", field(body, b'M'));
    assert!(field(body, b'M').contains("invalid frontend message type"));
}

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
        let got = read_messages(&mut c, b'E', 1).await;
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
