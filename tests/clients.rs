use crate::stack::{self, DB, ENTRA_USER, Stack, psql};

#[tokio::test(flavor = "multi_thread")]
async fn psql_logs_in_as_the_entra_user_with_no_password() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let out = psql(
        proxy.port(),
        "select current_user, current_database(), current_setting('application_name'), ssl from pg_stat_ssl where pid = pg_backend_pid()",
    );
    // The client said "someone-else": the proxy logged in as the Entra user, over TLS upstream,
    // and passed application_name through.
    assert_eq!(out.trim(), format!("{ENTRA_USER}|{DB}|it-psql|t"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokio_postgres_queries_prepared_statements_and_many_rows() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let client = stack::connect(proxy.port()).await.unwrap();
    client
        .batch_execute("create table items (id int primary key, name text not null)")
        .await
        .unwrap();
    let insert = client
        .prepare("insert into items values ($1, $2)")
        .await
        .unwrap();
    for i in 0..500 {
        client
            .execute(&insert, &[&i, &format!("item {i}")])
            .await
            .unwrap();
    }
    let rows = client
        .query(
            "select id, name from items where id >= $1 order by id",
            &[&250i32],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 250);
    assert_eq!(rows[0].get::<_, String>(1), "item 250");
    // A server-side error mid-session is the server's, and the session goes on.
    let err = client
        .execute("insert into items values (1, 'dup')", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505");
    let n: i64 = client
        .query_one("select count(*) from items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 500);
    // A large result streams through the relay.
    let copied: i64 = client
        .query_one(
            "select count(*) from (select generate_series(1, 100000)) g",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 100_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_runs_through_the_proxy() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let port = proxy.port().to_string();
    let base = |cmd: &mut std::process::Command| {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "someone-else"]);
    };
    let mut init = std::process::Command::new("pgbench");
    base(&mut init);
    init.args(["-i", "-s", "1", "-q", DB]);
    let (ok, _, err) = crate::util::run(&mut init);
    assert!(ok, "pgbench -i failed: {err}");
    let mut run = std::process::Command::new("pgbench");
    base(&mut run);
    run.args(["-c", "4", "-j", "2", "-t", "50", "-n", DB]);
    let (ok, out, err) = crate::util::run(&mut run);
    assert!(ok, "pgbench failed: {err}\n{out}");
    assert!(
        out.contains("number of transactions actually processed: 200/200"),
        "{out}"
    );
    assert!(out.contains("number of failed transactions: 0"), "{out}");
}

/// The Python sample of the seed document (psycopg2), with its token code removed.
#[tokio::test(flavor = "multi_thread")]
async fn psycopg2_seed_sample_without_token_code() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let python = python();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/psycopg2_sample.py"
    );
    let mut cmd = std::process::Command::new(&python);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "CONN",
            format!("host=127.0.0.1 port={} dbname={DB}", proxy.port()),
        )
        .arg(script);
    let (ok, out, err) = crate::util::run(&mut cmd);
    assert!(
        ok,
        "{python} {script} failed (run scripts/test.sh, which installs psycopg2 and sets EDP_PYTHON):\n{err}\n{out}"
    );
    assert_eq!(out.trim(), format!("ok user={ENTRA_USER} rows=3"));
}

/// The Python with the test clients installed: scripts/install-deps.sh sets EDP_PYTHON to its
/// virtualenv (also found when not set).
pub fn python() -> String {
    let cached = std::env::var("HOME")
        .map(|h| format!("{h}/.cache/entra-db-proxy/venv/bin/python"))
        .unwrap_or_default();
    std::env::var("EDP_PYTHON").unwrap_or_else(|_| {
        if std::path::Path::new(&cached).exists() {
            cached
        } else {
            "python3".into()
        }
    })
}

/// Service Connector's connection strings carry `sslmode=require`, and Go's lib/pq defaults to
/// it: such clients get TLS to the proxy (a self-signed certificate, since they do not verify).
/// And a client that names no database (libpq then sends its user name) gets the configured one.
#[tokio::test(flavor = "multi_thread")]
async fn sslmode_require_and_no_database_named() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let mut cmd = std::process::Command::new("psql");
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGSSLMODE", "require")
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port().to_string(),
            "-U",
            "app",
        ])
        .args([
            "-c",
            "select current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ]);
    let (ok, out, err) = crate::util::run(&mut cmd);
    assert!(ok, "psql sslmode=require: {err}\n{}", proxy.log());
    assert_eq!(out.trim(), format!("{DB}|t"));

    // --client-tls-mode disable: the old behaviour, SSLRequest answered 'N'.
    let plain = s.proxy_sp().args(["--client-tls-mode", "disable"]).spawn();
    let mut cmd = std::process::Command::new("psql");
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGSSLMODE", "require")
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &plain.port().to_string(),
            "-U",
            "app",
            "-d",
            DB,
        ])
        .args(["-c", "select 1"]);
    let (ok, _, err) = crate::util::run(&mut cmd);
    assert!(!ok);
    assert!(err.contains("does not support SSL"), "{err}");
}
