//! Unit tests of [`super::Config::load`]: every source, precedence, and error messages.

use super::*;
use crate::config::listener::{parse_listen, parse_mode};
use clap::Parser;
use dbproxy_credentials::UserAssignedId;

fn flags(args: &[&str]) -> Flags {
    let mut v = vec!["entra-db-proxy"];
    v.extend_from_slice(args);
    Flags::try_parse_from(v).unwrap()
}

#[test]
fn service_connector_zero_config() {
    let env = EnvSnapshot::from_pairs([
        (
            "AZURE_POSTGRESQL_CONNECTIONSTRING",
            "dbname=app host=srv.postgres.database.azure.com port=5432 sslmode=require user=aad_app",
        ),
        ("AZURE_POSTGRESQL_CLIENTID", "11111111-2222"),
    ]);
    let c = Config::load(&flags(&[]), &env).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.listen.to_string(), "127.0.0.1:5432");
    assert_eq!(l.upstream_host, "srv.postgres.database.azure.com");
    assert_eq!(l.user, "aad_app");
    assert_eq!(l.database.as_deref(), Some("app"));
    assert_eq!(l.tls_server_name, "srv.postgres.database.azure.com");
    assert!(
        matches!(&l.credential, CredentialSpec::ManagedIdentity { id: Some(UserAssignedId::ClientId(id)) } if id == "11111111-2222")
    );
}

#[test]
fn service_connector_service_principal() {
    let env = EnvSnapshot::from_pairs([
        ("AZURE_POSTGRESQL_HOST", "srv"),
        ("AZURE_POSTGRESQL_USER", "sp"),
        ("AZURE_POSTGRESQL_CLIENTID", "cid"),
        ("AZURE_POSTGRESQL_CLIENTSECRET", "s3cr3t-value"),
        ("AZURE_POSTGRESQL_TENANTID", "tid"),
    ]);
    let c = Config::load(&flags(&["--postgres-listen", "127.0.0.1:6000"]), &env).unwrap();
    assert_eq!(c.listeners[0].listen.to_string(), "127.0.0.1:6000");
    assert!(
        matches!(&c.listeners[0].credential, CredentialSpec::ClientSecret { tenant_id, client_id, .. } if tenant_id == "tid" && client_id == "cid")
    );
    assert!(!format!("{c:?}").contains("s3cr3t-value"));
}

#[test]
fn unix_socket_listen_addresses() {
    let unix = |s: &str, p: Protocol| match parse_listen(s, p, 0o600).unwrap() {
        ListenAddr::Unix { path, mode } => (path.display().to_string(), mode),
        other => panic!("{other}"),
    };
    assert_eq!(
        unix("/run/edp/", Protocol::Postgres).0,
        "/run/edp/.s.PGSQL.5432"
    );
    assert_eq!(
        unix("/run/edp/.s.PGSQL.6432", Protocol::Postgres).0,
        "/run/edp/.s.PGSQL.6432"
    );
    assert_eq!(
        unix("unix:/run/cql.sock", Protocol::Cassandra),
        ("/run/cql.sock".into(), 0o600)
    );
    assert!(parse_listen("localhost:5432", Protocol::Postgres, 0o600).is_err());
    assert_eq!(parse_mode("0660").unwrap(), 0o660);
    assert!(parse_mode("999").is_err());
}

#[test]
fn nothing_to_serve_says_what_to_set() {
    let e = Config::load(&flags(&[]), &EnvSnapshot::default()).unwrap_err();
    assert!(
        format!("{e:#}").contains("AZURE_POSTGRESQL_CONNECTIONSTRING"),
        "{e:#}"
    );
}

#[test]
fn flags_need_a_user() {
    let e = Config::load(
        &flags(&["--postgres-upstream", "db.example:5432"]),
        &EnvSnapshot::default(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("--postgres-user"), "{e:#}");
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edp-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_example_file_parses_with_every_listener_uncommented() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml.example"))
        .unwrap();
    // Uncomment the example listeners: commented lines that are TOML ("# [[listener]]",
    // "# key = value") after the first commented [[listener]].
    let looks_like_toml = |l: &str| {
        l == "[[listener]]"
            || l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
    };
    let mut out = String::new();
    let mut in_listener = false;
    for line in text.lines() {
        let uncommented = line.strip_prefix("# ").filter(|l| looks_like_toml(l));
        in_listener |= uncommented == Some("[[listener]]");
        match uncommented {
            Some(l) if in_listener => out.push_str(l),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let p = write("example-all.toml", &out);
    let env = EnvSnapshot::from_pairs([("ORDERS_SP_SECRET", "x")]);
    let c = Config::load(&flags(&["--config", p.to_str().unwrap()]), &env)
        .unwrap_or_else(|e| panic!("{e:#}\n{out}"));
    let protocols: Vec<_> = c.listeners.iter().map(|l| l.protocol).collect();
    assert_eq!(
        protocols,
        [
            Protocol::Postgres,
            Protocol::Postgres,
            Protocol::Cassandra,
            Protocol::Postgres
        ]
    );
    let pods = c.listeners[3].pod_identity.as_ref().unwrap();
    assert_eq!(pods.allow, ["shop/*", "batch/reports"]);
    assert_eq!(pods.users["batch/reports"], "reports_ro");
}

#[test]
fn pod_identity_settings_are_checked() {
    let bad = |toml: &str| {
        let p = write("pod-identity.toml", toml);
        format!(
            "{:#}",
            Config::load(
                &flags(&["--config", p.to_str().unwrap()]),
                &EnvSnapshot::default()
            )
            .unwrap_err()
        )
    };
    let e = bad(
        "[[listener]]\nprotocol = \"postgres\"\nupstream = \"db\"\npod_identity = { allow = [\"Shop\"] }\n",
    );
    assert!(e.contains("allow entry \"Shop\""), "{e}");
    let e = bad(
        "[[listener]]\nprotocol = \"postgres\"\nupstream = \"db\"\nlisten = \"/tmp/x.sock\"\npod_identity = { allow = [\"shop/*\"] }\n",
    );
    assert!(e.contains("needs a TCP listener"), "{e}");
    let e = bad(
        "[[listener]]\nprotocol = \"postgres\"\nupstream = \"db\"\nuser = \"u\"\nallow_uids = [1]\n",
    );
    assert!(e.contains("only for Unix-socket listeners"), "{e}");
    let e = bad("[[listener]]\nprotocol = \"postgres\"\nupstream = \"db\"\n");
    assert!(e.contains("user"), "{e}");
    let e = bad(
        "[[listener]]\nprotocol = \"postgres\"\nupstream = \"db\"\nwarm_sessions = 2\npod_identity = { allow = [\"shop/*\"] }\n",
    );
    assert!(
        e.contains("warm_sessions: warm sessions are logged in ahead"),
        "{e}"
    );
}

#[test]
fn toml_listeners() {
    let p = write(
        "ok.toml",
        r#"
        handshake_timeout = 5
        [[listener]]
        name = "orders"
        protocol = "postgres"
        listen = "127.0.0.1:15432"
        upstream = "orders.postgres.database.azure.com"
        user = "aad_orders"
        database = "orders"
        credential = { kind = "managed-identity", resource_id = "/subscriptions/x" }
        tls = { server_name = "other.example" }
        [[listener]]
        protocol = "postgres"
        listen = "127.0.0.1:15433"
        upstream = "b:6432"
        user = "u"
        "#,
    );
    let c = Config::load(
        &flags(&["--config", p.to_str().unwrap()]),
        &EnvSnapshot::default(),
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.handshake_timeout, Duration::from_secs(5));
    assert_eq!(c.listeners[0].tls_server_name, "other.example");
    assert_eq!(c.listeners[1].upstream_port, 6432);
    assert_eq!(c.listeners[1].name, "listener1");
    assert!(matches!(c.listeners[1].credential, CredentialSpec::Default));
}

/// The error (with its context chain) of loading `text` as the file `name`.
fn file_error(name: &str, text: &str) -> String {
    let p = write(name, text);
    let flags = flags(&["--config", p.to_str().unwrap()]);
    format!(
        "{:#}",
        Config::load(&flags, &EnvSnapshot::default()).unwrap_err()
    )
}

#[test]
fn toml_errors_name_file_and_key() {
    let e = file_error(
        "bad.toml",
        "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nlisten = 5\n",
    );
    assert!(e.contains("bad.toml") && e.contains("listen"), "{e}");

    let e = file_error(
        "typo.toml",
        "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nlistn = \"x\"\n",
    );
    assert!(e.contains("typo.toml") && e.contains("listn"), "{e}");

    let e = file_error(
        "addr.toml",
        "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nlisten = \"localhost\"\n",
    );
    assert!(
        e.contains("addr.toml") && e.contains("listener[0]") && e.contains("IP:PORT"),
        "{e}"
    );

    let e = file_error(
        "proto.toml",
        "[[listener]]\nprotocol = \"mysql\"\nupstream = \"h\"\nuser = \"u\"\n",
    );
    assert!(e.contains("proto.toml") && e.contains("postgres"), "{e}");
}

#[test]
fn cassandra_listeners() {
    let p = write(
        "cql.toml",
        r#"
        [[listener]]
        name = "catalog"
        protocol = "cassandra"
        upstream = "acct.cassandra.cosmos.azure.com"
        user = "acct"
        list_keys_url = "https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/acct/listKeys?api-version=2021-04-15"
        key = "secondary"
        data_center = "datacenter1"
        [[listener]]
        protocol = "cassandra"
        listen = "127.0.0.1:9043"
        upstream = "127.0.0.1:9142"
        user = "dev"
        password = "file"
        password_file = "/run/secrets/cql"
        "#,
    );
    let c = Config::load(
        &flags(&["--config", p.to_str().unwrap()]),
        &EnvSnapshot::default(),
    )
    .unwrap();
    let cosmos = &c.listeners[0];
    assert_eq!(cosmos.listen.to_string(), "127.0.0.1:9042");
    assert_eq!(cosmos.upstream_port, 10350);
    assert_eq!(cosmos.scope, ARM_SCOPE);
    let cql = cosmos.cassandra.as_ref().unwrap();
    assert_eq!(cql.max_protocol_version, 4, "Cosmos DB speaks v4 only");
    assert!(cql.compression.is_empty(), "Cosmos DB refuses compression");
    assert_eq!(cql.data_center.as_deref(), Some("datacenter1"));
    assert!(matches!(
        cql.password,
        CassandraPassword::CosmosKeys {
            key: CosmosKeyKind::Secondary,
            ..
        }
    ));
    let dev = c.listeners[1].cassandra.as_ref().unwrap();
    assert_eq!(dev.max_protocol_version, 5);
    assert!(matches!(dev.password, CassandraPassword::File(_)));

    let e = file_error(
        "cql-bad.toml",
        "[[listener]]\nprotocol = \"cassandra\"\nupstream = \"h\"\nuser = \"u\"\n",
    );
    assert!(
        e.contains("cql-bad.toml") && e.contains("list_keys_url"),
        "{e}"
    );
    let e = file_error(
        "pg-cql-key.toml",
        "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\ndata_center = \"x\"\n",
    );
    assert!(e.contains("data_center") && e.contains("cassandra"), "{e}");
}

#[test]
fn service_connector_cosmos_and_postgres_together() {
    let env = EnvSnapshot::from_pairs([
        (
            "AZURE_POSTGRESQL_CONNECTIONSTRING",
            "host=pg.postgres.database.azure.com dbname=d user=u",
        ),
        (
            "AZURE_COSMOS_CONTACTPOINT",
            "acct.cassandra.cosmos.azure.com",
        ),
        ("AZURE_COSMOS_PORT", "10350"),
        ("AZURE_COSMOS_USERNAME", "acct"),
        (
            "AZURE_COSMOS_LISTKEYURL",
            "https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/acct/listKeys?api-version=2021-04-15",
        ),
        (
            "AZURE_COSMOS_SCOPE",
            "https://management.azure.com/.default",
        ),
        ("AZURE_COSMOS_CLIENTID", "mi-client"),
    ]);
    let c = Config::load(&flags(&["--cassandra-listen", "127.0.0.1:19042"]), &env).unwrap();
    assert_eq!(c.listeners.len(), 2);
    let cql = &c.listeners[1];
    assert_eq!(
        (cql.protocol, cql.listen.to_string(), cql.upstream_port),
        (Protocol::Cassandra, "127.0.0.1:19042".to_owned(), 10350)
    );
    assert!(
        matches!(&cql.credential, CredentialSpec::ManagedIdentity { id: Some(UserAssignedId::ClientId(id)) } if id == "mi-client")
    );
    assert!(matches!(c.listeners[0].credential, CredentialSpec::Default));
}

#[test]
fn client_secret_comes_from_the_environment() {
    let text = "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\ncredential = { kind = \"client-secret\", tenant_id = \"t\", client_id = \"c\" }\n";
    let e = file_error("sp.toml", text);
    assert!(e.contains("AZURE_CLIENT_SECRET"), "{e}");
    let p = write("sp.toml", text);
    let env = EnvSnapshot::from_pairs([("AZURE_CLIENT_SECRET", "x")]);
    Config::load(&flags(&["--config", p.to_str().unwrap()]), &env).unwrap();
}

#[test]
fn one_managed_identity_selector() {
    let e = Config::load(
        &flags(&[
            "--postgres-upstream",
            "h",
            "--postgres-user",
            "u",
            "--credential",
            "managed-identity",
            "--client-id",
            "a",
            "--object-id",
            "b",
        ]),
        &EnvSnapshot::default(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("at most one"), "{e:#}");
}

#[test]
fn cql_password_and_key_are_enums_in_file_and_flags() {
    let cql = "[[listener]]\nprotocol = \"cassandra\"\nupstream = \"h\"\nuser = \"u\"\n";
    let e = file_error("cql-pw.toml", &format!("{cql}password = \"tokn\"\n"));
    assert!(
        e.contains("cql-pw.toml") && e.contains("password") && e.contains("cosmos-keys"),
        "{e}"
    );
    let e = file_error(
        "cql-key.toml",
        &format!("{cql}list_keys_url = \"https://m/x\"\nkey = \"tertiary\"\n"),
    );
    assert!(
        e.contains("cql-key.toml") && e.contains("key") && e.contains("tertiary"),
        "{e}"
    );

    let c = Config::load(
        &flags(&[
            "--cassandra-upstream",
            "127.0.0.1:9142",
            "--cassandra-user",
            "dev",
            "--cassandra-password",
            "file",
            "--cassandra-password-file",
            "/run/secrets/cql",
        ]),
        &EnvSnapshot::default(),
    )
    .unwrap();
    let cql = c.listeners[0].cassandra.as_ref().unwrap();
    assert!(
        matches!(&cql.password, CassandraPassword::File(p) if p.to_str() == Some("/run/secrets/cql"))
    );
    assert_eq!(c.listeners[0].scope, ARM_SCOPE);

    let c = Config::load(
        &flags(&[
            "--cassandra-upstream",
            "acct.cassandra.cosmos.azure.com",
            "--cassandra-list-keys-url",
            "https://management.azure.com/x/listKeys",
            "--cassandra-key",
            "readonly-secondary",
            "--scope",
            "https://ignored.example/.default",
        ]),
        &EnvSnapshot::default(),
    )
    .unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.user, "acct", "the account name from the host");
    assert_eq!(l.scope, ARM_SCOPE, "--scope is for the token, not listKeys");
    assert!(matches!(
        l.cassandra.as_ref().unwrap().password,
        CassandraPassword::CosmosKeys {
            key: CosmosKeyKind::ReadOnlySecondary,
            ..
        }
    ));
    let e = Flags::try_parse_from(["entra-db-proxy", "--cassandra-key", "tertiary"]).unwrap_err();
    assert!(e.to_string().contains("--cassandra-key"), "{e}");
}

#[test]
fn flags_override_the_file_for_every_listener() {
    let text = "max_connections = 5\nunix_socket_mode = \"0660\"\n[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nlisten = \"/run/edp/\"\n[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nmax_connections = 3\n";
    let p = write("globals.toml", text);
    let path = p.to_str().unwrap();
    let env = EnvSnapshot::default();
    let c = Config::load(&flags(&["--config", path]), &env).unwrap();
    let caps: Vec<_> = c.listeners.iter().map(|l| l.max_connections).collect();
    assert_eq!(caps, [5, 3], "a listener's key beats the file's global one");
    assert!(matches!(
        c.listeners[0].listen,
        ListenAddr::Unix { mode: 0o660, .. }
    ));
    let c = Config::load(
        &flags(&[
            "--config",
            path,
            "--max-connections",
            "7",
            "--unix-socket-mode",
            "0600",
        ]),
        &env,
    )
    .unwrap();
    let caps: Vec<_> = c.listeners.iter().map(|l| l.max_connections).collect();
    assert_eq!(caps, [7, 7], "flags beat the file");
    assert!(matches!(
        c.listeners[0].listen,
        ListenAddr::Unix { mode: 0o600, .. }
    ));
    // Flags that define a listener do not mix with a file.
    let e = Config::load(
        &flags(&["--config", path, "--postgres-upstream", "x"]),
        &env,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("use one of them"), "{e:#}");
}

#[test]
fn durations_in_the_file_and_in_flags() {
    let listener = "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\n";
    let p = write(
        "durations.toml",
        &format!(
            "handshake_timeout = \"1m30s\"\nconnect_timeout = 5\ncredential_timeout = \"4s\"\nmax_shutdown_delay = \"45\"\nmin_shutdown_delay = \"500ms\"\nidle_timeout = \"1h\"\n{listener}"
        ),
    );
    let path = p.to_str().unwrap();
    let env = EnvSnapshot::default();
    let c = Config::load(&flags(&["--config", path]), &env).unwrap();
    assert_eq!(c.handshake_timeout, Duration::from_secs(90));
    assert_eq!(c.credential_timeout, Duration::from_secs(4));
    assert_eq!(
        c.connect_timeout,
        Duration::from_secs(5),
        "a TOML integer is seconds"
    );
    assert_eq!(
        c.max_shutdown_delay,
        Duration::from_secs(45),
        "so is a bare number in a string"
    );
    assert_eq!(c.min_shutdown_delay, Duration::from_millis(500));
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(3600)));

    // Flags win over the file, in either form.
    let c = Config::load(
        &flags(&[
            "--config",
            path,
            "--handshake-timeout",
            "2m",
            "--connect-timeout",
            "7",
            "--credential-timeout",
            "1500ms",
            "--idle-timeout",
            "0",
        ]),
        &env,
    )
    .unwrap();
    assert_eq!(c.handshake_timeout, Duration::from_secs(120));
    assert_eq!(c.connect_timeout, Duration::from_secs(7));
    assert_eq!(c.credential_timeout, Duration::from_millis(1500));
    assert_eq!(c.idle_timeout, None, "0 still means never");

    // Defaults.
    let c = Config::load(
        &flags(&["--postgres-upstream", "h", "--postgres-user", "u"]),
        &env,
    )
    .unwrap();
    assert_eq!(
        (
            c.handshake_timeout,
            c.connect_timeout,
            c.max_shutdown_delay,
            c.min_shutdown_delay,
            c.idle_timeout,
            c.credential_timeout
        ),
        (
            Duration::from_secs(30),
            Duration::from_secs(10),
            Duration::from_secs(30),
            Duration::ZERO,
            None,
            Duration::from_secs(30)
        )
    );

    // Errors name the file, the key, and show an example.
    let e = file_error(
        "bad-duration.toml",
        &format!("connect_timeout = \"10 parsecs\"\n{listener}"),
    );
    assert!(
        e.contains("bad-duration.toml") && e.contains("connect_timeout") && e.contains("30s"),
        "{e}"
    );
    let e = file_error(
        "neg-duration.toml",
        &format!("idle_timeout = -1\n{listener}"),
    );
    assert!(e.contains("idle_timeout") && e.contains("30s"), "{e}");
    let e = Flags::try_parse_from(["entra-db-proxy", "--max-shutdown-delay", "soon"]).unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("--max-shutdown-delay") && e.contains("30s") && e.contains("\"soon\""),
        "{e}"
    );
}

#[test]
fn cassandra_max_frame_size() {
    let dev = |size: Option<&str>| {
        let mut args = vec![
            "--cassandra-upstream",
            "127.0.0.1:9142",
            "--cassandra-user",
            "dev",
            "--cassandra-password",
            "file",
            "--cassandra-password-file",
            "/run/secrets/cql",
        ];
        if let Some(size) = size {
            args.extend(["--cassandra-max-frame-size", size]);
        }
        Config::load(&flags(&args), &EnvSnapshot::default())
    };
    let size = |c: &Config| c.listeners[0].cassandra.as_ref().unwrap().max_frame_size;
    assert_eq!(size(&dev(None).unwrap()), 16 << 20, "Cassandra's default");
    assert_eq!(size(&dev(Some("32MiB")).unwrap()), 32 << 20);
    assert_eq!(size(&dev(Some("1048576")).unwrap()), 1 << 20);
    let e = dev(Some("1KiB")).unwrap_err().to_string();
    assert!(e.contains("max_frame_size") && e.contains("64KiB"), "{e}");
    let e = Flags::try_parse_from(["entra-db-proxy", "--cassandra-max-frame-size", "big"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("16MiB"), "{e}");

    let p = write(
        "cql-frame.toml",
        "[[listener]]\nprotocol = \"cassandra\"\nupstream = \"h\"\nuser = \"u\"\npassword = \"file\"\npassword_file = \"/p\"\nmax_frame_size = \"8MiB\"\n[[listener]]\nprotocol = \"cassandra\"\nlisten = \"127.0.0.1:9043\"\nupstream = \"h\"\nuser = \"u\"\npassword = \"file\"\npassword_file = \"/p\"\nmax_frame_size = 65536\n",
    );
    let c = Config::load(
        &flags(&["--config", p.to_str().unwrap()]),
        &EnvSnapshot::default(),
    )
    .unwrap();
    assert_eq!(size(&c), 8 << 20);
    assert_eq!(
        c.listeners[1].cassandra.as_ref().unwrap().max_frame_size,
        65536
    );
    let e = file_error(
        "pg-frame.toml",
        "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nmax_frame_size = \"1MiB\"\n",
    );
    assert!(
        e.contains("max_frame_size") && e.contains("cassandra"),
        "{e}"
    );
    let e = file_error(
        "cql-frame-bad.toml",
        "[[listener]]\nprotocol = \"cassandra\"\nupstream = \"h\"\nuser = \"u\"\npassword = \"file\"\npassword_file = \"/p\"\nmax_frame_size = \"16 parsecs\"\n",
    );
    assert!(e.contains("unknown unit"), "{e}");
}

#[test]
fn session_threads_default_to_the_cpus_and_come_from_the_file_or_a_flag() {
    let env = EnvSnapshot::default();
    let base = ["--postgres-upstream", "h", "--postgres-user", "u"];
    let c = Config::load(&flags(&base), &env).unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(c.session_threads, cpus);

    let listener = "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\n";
    let p = write("threads.toml", &format!("session_threads = 3\n{listener}"));
    let path = p.to_str().unwrap();
    let c = Config::load(&flags(&["--config", path]), &env).unwrap();
    assert_eq!(c.session_threads, 3);
    let c = Config::load(&flags(&["--config", path, "--session-threads", "0"]), &env).unwrap();
    assert_eq!(c.session_threads, 0, "0: sessions on the shared runtime");
}
