//! The PostgreSQL harness: TLS logins in each auth mode with token-sized passwords, non-TLS
//! logins rejected like Azure, admin helpers.

use dbproxy_testkit::{
    certs::TestCa,
    postgres::{PasswordAuth, PgOptions, PgServer, pg_error_text},
    tokens,
};

async fn login_with_token_passwords(auth: PasswordAuth) {
    let ca = TestCa::new("pg test CA");
    let pg = PgServer::start(&ca, PgOptions::with_auth(auth))
        .await
        .unwrap();
    eprintln!("{auth:?}: PgServer::start took {:?}", pg.startup_time());
    for len in [1_900, 16 * 1024] {
        let token = tokens::jwt_like(
            len,
            "https://ossrdbms-aad.database.windows.net",
            2_000_000_000,
        );
        pg.set_role_password("app'user", &token).await.unwrap();
        let client = pg
            .connect_tls("app'user", &token, "postgres")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{auth:?} len {len}: {}\n{}",
                    pg_error_text(&e),
                    pg.log_contents()
                )
            });
        let row = client
            .query_one("SELECT 1::int4, current_user", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        assert_eq!(row.get::<_, String>(1), "app'user");
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl);

        // A wrong password fails like Azure's.
        let err = pg
            .connect_tls("app'user", "nope", "postgres")
            .await
            .unwrap_err();
        let db = err.as_db_error().expect("server error");
        assert_eq!(db.code().code(), "28P01", "{}", pg_error_text(&err));
        assert!(
            db.message()
                .contains("password authentication failed for user")
        );

        // Non-TLS TCP logins are refused, even with the right password.
        let err = pg
            .connect_plain("app'user", &token, "postgres")
            .await
            .unwrap_err();
        let text = pg_error_text(&err);
        assert!(
            text.contains("no pg_hba.conf entry") && text.contains("no encryption"),
            "{text}"
        );
    }
    // the stored verifier matches the mode
    let rows = pg
        .admin_query("SELECT rolpassword FROM pg_authid WHERE rolname = 'app''user'")
        .await
        .unwrap();
    let stored = rows[0][0].clone().unwrap();
    match auth {
        PasswordAuth::Md5 => assert!(stored.starts_with("md5"), "{stored}"),
        _ => assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}"),
    }
}

#[tokio::test]
async fn cleartext_password_mode() {
    login_with_token_passwords(PasswordAuth::Password).await;
}

#[tokio::test]
async fn scram_mode() {
    login_with_token_passwords(PasswordAuth::Scram).await;
}

#[tokio::test]
async fn md5_mode() {
    login_with_token_passwords(PasswordAuth::Md5).await;
}

#[tokio::test]
async fn admin_helpers_database_and_cleanup() {
    let ca = TestCa::new("pg test CA");
    let mut pg = PgServer::start(&ca, PgOptions::default()).await.unwrap();
    assert_eq!(pg.host(), "127.0.0.1");
    assert!(pg.bin_dir().join("postgres").is_file());
    pg.set_role_password("aad_app", "s3cret").await.unwrap();
    pg.create_database("appdb", "aad_app").await.unwrap();
    pg.create_database("appdb", "aad_app").await.unwrap(); // idempotent
    let c = pg.connect_tls("aad_app", "s3cret", "appdb").await.unwrap();
    c.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    let x: i32 = c.query_one("SELECT x FROM t", &[]).await.unwrap().get(0);
    assert_eq!(x, 42);
    // libpq (psql) with verify-full against the test CA, over the IP SAN
    let out = tokio::process::Command::new("psql")
        .arg(pg.conn_str("aad_app", "appdb"))
        .args(["-XAtc", "SELECT x FROM t"])
        .env("PGPASSWORD", "s3cret")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // errors carry the server log
    let err = pg.admin_execute("SELEC nonsense").await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("syntax error") && text.contains("server log"),
        "{text}"
    );
    assert!(
        pg.log_contents()
            .contains("connection authorized: user=aad_app")
    );
    let dir = pg.dir().to_path_buf();
    pg.stop();
    assert!(pg.connect_tls("aad_app", "s3cret", "appdb").await.is_err());
    drop(pg);
    if std::env::var_os("KEEP_TEST_DIRS").is_none() {
        assert!(!dir.exists());
    }
}

#[tokio::test]
async fn servers_in_parallel_get_their_own_ports() {
    let ca = TestCa::new("pg test CA");
    let (a, b) = tokio::join!(
        PgServer::start(&ca, PgOptions::default()),
        PgServer::start(&ca, PgOptions::default())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.socket_dir(), b.socket_dir());
}

/// The scale bench's stand-in: a TLS login with an accepted password gets a session that
/// answers a query; another password gets PostgreSQL's 28P01.
#[tokio::test]
async fn the_standin_logs_in_with_an_accepted_password_only() {
    use dbproxy_testkit::postgres::{MakeRustlsConnect, PgStandin};
    use std::sync::Arc;
    let ca = TestCa::new("standin test CA");
    let check = Arc::new(|p: &[u8]| p == b"the-token");
    let standin = PgStandin::start(&ca, check).await.unwrap();
    let connect = |password: &'static str| {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(standin.port())
            .user("aad_app")
            .password(password)
            .dbname("db")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls = MakeRustlsConnect::new(ca.rustls_client_config());
        async move { config.connect(tls).await }
    };
    let (client, conn) = connect("the-token").await.unwrap();
    tokio::spawn(conn);
    let rows = client.simple_query("select 1").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1"))
    );
    let err = connect("another").await.err().unwrap();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
}
