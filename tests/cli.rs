use crate::{
    stack::{self, DB, ENTRA_USER, Stack, psql},
    util::ProxyCmd,
};

#[test]
fn help_documents_every_option() {
    let (code, out) = ProxyCmd::new().arg("--help").run_to_end();
    assert_eq!(code, Some(0), "{out}");
    for flag in [
        "--config",
        "--postgres-listen",
        "--postgres-upstream",
        "--postgres-user",
        "--postgres-database",
        "--credential",
        "--client-id",
        "--object-id",
        "--resource-id",
        "--tenant-id",
        "--client-certificate",
        "--federated-token-file",
        "--scope",
        "--ca-file",
        "--tls-server-name",
        "--imds-endpoint",
        "--authority-host",
        "--handshake-timeout",
        "--connect-timeout",
        "--credential-timeout",
        "--max-shutdown-delay",
        "--log-format",
        "--version",
    ] {
        assert!(out.contains(flag), "--help does not mention {flag}:\n{out}");
    }
    for var in [
        "ENTRA_DB_PROXY_POSTGRES_LISTEN",
        "AZURE_POSTGRESQL_CONNECTIONSTRING",
    ] {
        assert!(out.contains(var), "--help does not mention {var}");
    }
}

#[test]
fn nothing_to_serve_is_a_clear_error() {
    let (code, out) = ProxyCmd::new().run_to_end();
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("nothing to serve") && out.contains("AZURE_POSTGRESQL_CONNECTIONSTRING"),
        "{out}"
    );
}

#[test]
fn invalid_config_file_names_file_and_key() {
    let dir = dbproxy_testkit::util::unique_temp_dir("cli").unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nlisten = \"nope\"\n").unwrap();
    let (code, out) = ProxyCmd::new()
        .args(["--config", path.to_str().unwrap()])
        .run_to_end();
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("proxy.toml") && out.contains("listener[0]") && out.contains("listen"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_example_config_is_valid() {
    // Parse only: an unroutable upstream is never dialled because no client connects; the
    // listener binds loopback port 5432, so use a copy with port 0.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml.example"))
        .unwrap();
    let dir = dbproxy_testkit::util::unique_temp_dir("cli").unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text.replace("127.0.0.1:5432", "127.0.0.1:0")).unwrap();
    let mut proxy = ProxyCmd::new()
        .args(["--config", path.to_str().unwrap()])
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
        // Its managed identity has no IMDS here: the token prefetch fails (and is retried).
        .expect_warnings(&["access token acquisition failed"])
        .spawn();
    assert_eq!(proxy.addrs.keys().collect::<Vec<_>>(), ["orders"]);
    assert_eq!(proxy.terminate(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

/// Zero configuration: the variables Service Connector sets, in each connection-string form.
#[tokio::test(flavor = "multi_thread")]
async fn service_connector_connection_strings() {
    let s = Stack::start().await;
    let port = s.pg.port();
    let c = s.azure.config();
    for cs in [
        format!("dbname={DB} host=127.0.0.1 port={port} sslmode=require user={ENTRA_USER}"),
        format!(
            "Server=127.0.0.1;Database={DB};Port={port};Ssl Mode=Require;User Id={ENTRA_USER};"
        ),
        format!("jdbc:postgresql://127.0.0.1:{port}/{DB}?sslmode=require&user={ENTRA_USER}"),
    ] {
        let proxy = ProxyCmd::new()
            .env("ENTRA_DB_PROXY_POSTGRES_LISTEN", "127.0.0.1:0")
            .env("AZURE_POSTGRESQL_CONNECTIONSTRING", &cs)
            .env("AZURE_POSTGRESQL_CLIENTID", &c.client_id)
            .env("AZURE_POSTGRESQL_CLIENTSECRET", &c.client_secret)
            .env("AZURE_POSTGRESQL_TENANTID", &c.tenant_id)
            .env("AZURE_AUTHORITY_HOST", s.azure.authority_host())
            .env("SSL_CERT_FILE", s.ca_file.to_str().unwrap())
            .spawn();
        assert_eq!(
            psql(proxy.port(), "select current_user").trim(),
            ENTRA_USER,
            "with {cs}"
        );
    }
}

/// A client that sends no database parameter gets the configured default.
#[tokio::test(flavor = "multi_thread")]
async fn default_database_when_the_client_names_none() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.port())
        .user("whoever")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let db: String = client
        .query_one("select current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, DB);
}

#[tokio::test(flavor = "multi_thread")]
async fn toml_config_with_two_listeners() {
    let s = Stack::start().await;
    s.pg.create_database("reports", ENTRA_USER).await.unwrap();
    let c = s.azure.config();
    let path = s.dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            r#"
ca_file = "{ca}"
authority_host = "{authority}"

[[listener]]
name = "orders"
protocol = "postgres"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:{port}"
user = "{ENTRA_USER}"
database = "orders"
credential = {{ kind = "client-secret", tenant_id = "{tenant}", client_id = "{client}", client_secret_env = "ORDERS_SECRET" }}

[[listener]]
name = "reports"
protocol = "postgres"
listen = "127.0.0.1:0"
upstream = "localhost:{port}"
user = "{ENTRA_USER}"
database = "reports"
credential = {{ kind = "client-secret", tenant_id = "{tenant}", client_id = "{client}", client_secret_env = "ORDERS_SECRET" }}
tls = {{ server_name = "localhost" }}
"#,
            ca = s.ca_file.display(),
            authority = s.azure.authority_host(),
            port = s.pg.port(),
            tenant = c.tenant_id,
            client = c.client_id,
        ),
    )
    .unwrap();
    let proxy = ProxyCmd::new()
        .args(["--config", path.to_str().unwrap()])
        .env("ORDERS_SECRET", &c.client_secret)
        // Each listener gets its own token, and the fake Entra makes only the latest one the
        // role's password (real Entra tokens all stay valid): the first listener's login is
        // refused once and retried with a fresh token.
        .expect_warnings(&["the upstream refused the credential"])
        .spawn();
    for (name, db) in [("orders", "orders"), ("reports", "reports")] {
        let port = proxy.addrs[name].port();
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("x")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let got: String = client
            .query_one("select current_database()::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, db);
    }
}

/// SIGTERM: no new connections, the running query finishes, then exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_queries_finish() {
    let s = Stack::start().await;
    let mut proxy = s.proxy_sp().args(["--max-shutdown-delay", "20"]).spawn();
    let port = proxy.port();
    let client = stack::connect(port).await.unwrap();
    let running = tokio::spawn(async move {
        let r = client
            .query_one("select pg_sleep(2)::text || 'done'", &[])
            .await
            .map(|r| r.get::<_, String>(0));
        drop(client);
        r
    });
    // SIGTERM only once the query runs upstream.
    stack::wait_until_running(&s, "select pg_sleep(2)::text || 'done'").await;
    let code = tokio::task::spawn_blocking(move || {
        let code = proxy.terminate();
        (code, proxy)
    });
    let result = running.await.unwrap().unwrap();
    assert_eq!(result, "done");
    let (code, proxy) = code.await.unwrap();
    assert_eq!(code, Some(0), "{}", proxy.log());
    assert!(
        proxy.log().contains("all sessions finished"),
        "{}",
        proxy.log()
    );
}

/// Durations from `ENTRA_DB_PROXY_*` take the same forms as flags (`1m30s`, `500ms`, or bare
/// seconds), and a bad one names the option and shows an example; `--help` shows both forms.
#[test]
fn durations_from_variables() {
    let (code, out) = ProxyCmd::new()
        .env("ENTRA_DB_PROXY_HANDSHAKE_TIMEOUT", "1m30s")
        .env("ENTRA_DB_PROXY_MIN_SHUTDOWN_DELAY", "500ms")
        .env("ENTRA_DB_PROXY_CONNECT_TIMEOUT", "10")
        .env("ENTRA_DB_PROXY_CREDENTIAL_TIMEOUT", "5s")
        .run_to_end();
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("nothing to serve"),
        "the durations were accepted: {out}"
    );

    let (code, out) = ProxyCmd::new()
        .env("ENTRA_DB_PROXY_CONNECT_TIMEOUT", "soon")
        .run_to_end();
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("--connect-timeout") && out.contains("30s") && out.contains("soon"),
        "{out}"
    );

    let (_, help) = ProxyCmd::new().arg("--help").run_to_end();
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for flag in [
        "--handshake-timeout",
        "--connect-timeout",
        "--credential-timeout",
        "--max-shutdown-delay",
        "--min-shutdown-delay",
        "--idle-timeout",
    ] {
        let text = &help[help.find(&format!("{flag} <DURATION>")).unwrap()..];
        let text = &text[..text.find("[default").unwrap()];
        assert!(
            (text.contains("s,") || text.contains("m,"))
                && text.contains("seconds as a bare number"),
            "{flag}: {text}"
        );
    }
}
