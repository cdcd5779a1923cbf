//! FakeAzure: each endpoint's happy path and Azure-shaped errors, checked with exact JSON types.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig, TokenSource},
    certs::{TestCa, client_rsa_cert},
    postgres::{PgOptions, PgServer},
    tokens,
};
use serde_json::Value;

const PG_RESOURCE: &str = "https://ossrdbms-aad.database.windows.net";
const PG_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

async fn start(config: FakeAzureConfig) -> (TestCa, FakeAzure, reqwest::Client) {
    let ca = TestCa::new("azure test CA");
    let fake = FakeAzure::start(&ca, config).await.unwrap();
    let http = ca.reqwest_client();
    (ca, fake, http)
}

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn with_query(base: impl AsRef<str>, pairs: &[(&str, &str)]) -> String {
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{}?{q}", base.as_ref())
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test]
async fn imds_happy_path_all_strings() {
    let (_ca, fake, http) = start(FakeAzureConfig::default()).await;
    let resp = http
        .get(with_query(
            fake.imds_token_url(),
            &[("api-version", "2018-02-01"), ("resource", PG_RESOURCE)],
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let (status, v) = json(resp).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        keys(&v),
        [
            "access_token",
            "expires_in",
            "expires_on",
            "not_before",
            "refresh_token",
            "resource",
            "token_type"
        ]
    );
    for (k, val) in v.as_object().unwrap() {
        assert!(val.is_string(), "{k} must be a string: {val}");
    }
    assert_eq!(v["resource"], PG_RESOURCE);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["refresh_token"], "");
    let expires_in: u64 = v["expires_in"].as_str().unwrap().parse().unwrap();
    assert!((3590..=3599).contains(&expires_in));
    let expires_on: u64 = v["expires_on"].as_str().unwrap().parse().unwrap();
    assert!(expires_on > tokens::now_epoch() + 3500);
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(token.len(), 1900);
    assert_eq!(tokens::claims(token).unwrap()["aud"], PG_RESOURCE);
    let issued = fake.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].source, TokenSource::Imds);
    assert_eq!(issued[0].token, token);
    assert_eq!(fake.last_token().as_deref(), Some(token));
    assert_eq!(fake.request_count(), 1);
    assert!(
        fake.requests()[0]
            .headers
            .iter()
            .any(|(k, v)| k == "metadata" && v == "true")
    );
}

#[tokio::test]
async fn imds_errors() {
    let (_ca, fake, http) = start(FakeAzureConfig {
        managed_identity_client_id: Some("11111111-1111-4111-8111-111111111111".into()),
        ..Default::default()
    })
    .await;
    let url = format!("{}/metadata/identity/oauth2/token", fake.imds_url());
    // no Metadata header
    let resp = http
        .get(with_query(
            &url,
            &[("api-version", "2018-02-01"), ("resource", PG_RESOURCE)],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#
    );
    // unknown user-assigned identity; known one works
    let get = |client_id: &'static str| {
        http.get(with_query(
            &url,
            &[
                ("api-version", "2019-08-01"),
                ("resource", PG_RESOURCE),
                ("client_id", client_id),
            ],
        ))
        .header("Metadata", "true")
        .send()
    };
    let (status, v) = json(get("22222222-2222-4222-8222-222222222222").await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(
        v,
        serde_json::json!({"error":"invalid_request","error_description":"Identity not found"})
    );
    let (status, _) = json(get("11111111-1111-4111-8111-111111111111").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        fake.issued()[0].client_id.as_deref(),
        Some("11111111-1111-4111-8111-111111111111")
    );
    // by object id and resource id
    let cfg = fake.config();
    for (k, val) in [
        ("object_id", cfg.managed_identity_object_id.clone()),
        ("msi_res_id", cfg.managed_identity_resource_id.clone()),
    ] {
        let (status, v) = json(
            http.get(with_query(
                &url,
                &[
                    ("api-version", "2018-02-01"),
                    ("resource", PG_RESOURCE),
                    (k, &val),
                ],
            ))
            .header("Metadata", "true")
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{k}: {v}");
    }
    // a scope instead of a resource
    let (status, v) = json(
        http.get(with_query(
            &url,
            &[("api-version", "2018-02-01"), ("resource", PG_SCOPE)],
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"], "invalid_resource");
    // down
    fake.set_down(true);
    let (status, _) = json(get("11111111-1111-4111-8111-111111111111").await.unwrap()).await;
    assert_eq!(status, 503);
    fake.set_down(false);
    let (status, _) = json(get("11111111-1111-4111-8111-111111111111").await.unwrap()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn app_service_identity_endpoint() {
    let (_ca, fake, http) = start(FakeAzureConfig::default()).await;
    let get = |header: Option<String>, extra: &[(&str, &str)]| {
        let mut q = vec![("resource", PG_RESOURCE), ("api-version", "2019-08-01")];
        q.extend_from_slice(extra);
        let mut rb = http.get(with_query(fake.identity_endpoint(), &q));
        if let Some(h) = header {
            rb = rb.header("X-IDENTITY-HEADER", h);
        }
        rb.send()
    };
    let (status, v) = json(get(Some(fake.identity_header()), &[]).await.unwrap()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        keys(&v),
        [
            "access_token",
            "client_id",
            "expires_on",
            "resource",
            "token_type"
        ]
    );
    assert!(v["expires_on"].is_string());
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(
        v["client_id"],
        fake.config().system_assigned_client_id.as_str()
    );
    assert_eq!(fake.issued()[0].source, TokenSource::AppService);

    let (status, v) = json(get(None, &[]).await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(keys(&v), ["correlationId", "message", "statusCode"]);
    assert_eq!(v["statusCode"], 401);
    let (status, _) = json(get(Some("wrong".into()), &[]).await.unwrap()).await;
    assert_eq!(status, 401);
    let (status, v) = json(
        get(Some(fake.identity_header()), &[("client_id", "nope")])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        v["message"],
        "No Managed Identity found for specified ClientId/ResourceId/PrincipalId."
    );
}

async fn post_token(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    json(http.post(url).form(form).send().await.unwrap()).await
}

fn assert_entra_error(v: &Value, error: &str, code: u64) {
    assert_eq!(
        keys(v),
        [
            "correlation_id",
            "error",
            "error_codes",
            "error_description",
            "error_uri",
            "timestamp",
            "trace_id"
        ],
        "{v}"
    );
    assert_eq!(v["error"], error, "{v}");
    assert_eq!(v["error_codes"], serde_json::json!([code]), "{v}");
    let d = v["error_description"].as_str().unwrap();
    assert!(d.starts_with(&format!("AADSTS{code}: ")), "{d}");
    assert!(d.contains("\r\nTrace ID: "), "{d}");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn entra_client_secret() {
    let (_ca, fake, http) = start(FakeAzureConfig::default()).await;
    let cfg = fake.config();
    let url = fake.token_url();
    assert!(url.starts_with("https://127.0.0.1:"));
    let form = |secret: &'static str, scope: &'static str| {
        vec![
            ("client_id", cfg.client_id.clone()),
            ("client_secret", secret.to_owned()),
            ("grant_type", "client_credentials".to_owned()),
            ("scope", scope.to_owned()),
        ]
    };
    let ok = form("", PG_SCOPE);
    let ok: Vec<(&str, String)> = ok
        .into_iter()
        .map(|(k, v)| {
            if k == "client_secret" {
                (k, cfg.client_secret.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    let ok: Vec<(&str, &str)> = ok.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, v) = post_token(&http, &url, &ok).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        keys(&v),
        ["access_token", "expires_in", "ext_expires_in", "token_type"]
    );
    assert!(
        v["expires_in"].is_u64() && v["ext_expires_in"].is_u64(),
        "{v}"
    );
    assert_eq!(v["token_type"], "Bearer");
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(tokens::claims(token).unwrap()["aud"], PG_RESOURCE);
    let t = &fake.issued()[0];
    assert_eq!(
        (t.source, t.scope.as_str(), t.resource.as_str()),
        (TokenSource::ClientSecret, PG_SCOPE, PG_RESOURCE)
    );
    assert_eq!(t.client_id.as_deref(), Some(cfg.client_id.as_str()));

    // wrong secret
    let bad = form("wrong", PG_SCOPE);
    let bad: Vec<(&str, &str)> = bad.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, v) = post_token(&http, &url, &bad).await;
    assert_eq!(status, 401);
    assert_entra_error(&v, "invalid_client", 7000215);
    // scope without /.default
    let mut no_default = ok.clone();
    no_default[3] = ("scope", PG_RESOURCE);
    let (status, v) = post_token(&http, &url, &no_default).await;
    assert_eq!(status, 400);
    assert_entra_error(&v, "invalid_scope", 1002012);
    // missing parameter
    let (status, v) = post_token(&http, &url, &ok[..3]).await;
    assert_eq!(status, 400);
    assert_entra_error(&v, "invalid_request", 900144);
    // unknown tenant
    let other = format!("{}/common-nope/oauth2/v2.0/token", fake.authority_host());
    let (status, v) = post_token(&http, &other, &ok).await;
    assert_eq!(status, 400);
    assert_entra_error(&v, "invalid_request", 90002);
    // down
    fake.set_down(true);
    let (status, v) = post_token(&http, &url, &ok).await;
    assert_eq!(status, 503);
    assert_entra_error(&v, "temporarily_unavailable", 90033);
    fake.set_down(false);
    // lifetime / length changes apply to new tokens
    fake.set_lifetime(Duration::from_secs(120));
    fake.set_token_len(6900);
    let (_, v) = post_token(&http, &url, &ok).await;
    assert!(v["expires_in"].as_u64().unwrap() <= 120);
    assert_eq!(v["access_token"].as_str().unwrap().len(), 6900);
}

#[tokio::test]
async fn entra_certificate_and_federated_assertions() {
    let cert = client_rsa_cert("sp-cert");
    let (_ca, fake, http) = start(FakeAzureConfig {
        client_cert: Some(cert.clone()),
        federated_token: Some("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln".into()),
        ..Default::default()
    })
    .await;
    let cfg = fake.config();
    let url = fake.token_url();
    let send = |assertion: String| {
        let form = vec![
            ("client_id", cfg.client_id.clone()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            ("client_assertion", assertion),
            ("grant_type", "client_credentials".to_owned()),
            ("scope", PG_SCOPE.to_owned()),
        ];
        http.post(&url).form(&form).send()
    };
    let (status, v) = json(
        send(cert.client_assertion(&url, &cfg.client_id).unwrap())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(fake.issued()[0].source, TokenSource::ClientCertificate);
    // the audience may name localhost too
    let localhost_url = url.replace("127.0.0.1", "localhost");
    let (status, _) = json(
        send(
            cert.client_assertion(&localhost_url, &cfg.client_id)
                .unwrap(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    // signed by another key
    let other = client_rsa_cert("other");
    let (status, v) = json(
        send(other.client_assertion(&url, &cfg.client_id).unwrap())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_entra_error(&v, "invalid_client", 700027);
    // federated
    let (status, v) = json(send(cfg.federated_token.clone().unwrap()).await.unwrap()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(fake.issued().last().unwrap().source, TokenSource::Federated);
    let (status, v) = json(
        send("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_entra_error(&v, "invalid_client", 700211);
}

#[tokio::test]
async fn on_issue_runs_before_the_response() {
    let (_ca, fake, http) = start(FakeAzureConfig::default()).await;
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    fake.on_issue(move |t| {
        let flag = flag.clone();
        async move {
            assert_eq!(t.resource, PG_RESOURCE);
            tokio::time::sleep(Duration::from_millis(200)).await;
            flag.store(true, Ordering::SeqCst);
        }
    });
    let resp = http
        .get(with_query(
            fake.imds_token_url(),
            &[("api-version", "2018-02-01"), ("resource", PG_RESOURCE)],
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert!(
        done.load(Ordering::SeqCst),
        "hook must finish before the response"
    );
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn issued_tokens_become_the_pg_password() {
    let ca = TestCa::new("e2e CA");
    let pg = Arc::new(PgServer::start(&ca, PgOptions::default()).await.unwrap());
    let fake = FakeAzure::start(&ca, FakeAzureConfig::default())
        .await
        .unwrap();
    fake.sync_pg_role_password(pg.clone(), "aad_app", PG_RESOURCE);
    let http = ca.reqwest_client();
    let (_, v) = json(
        http.get(with_query(
            fake.identity_endpoint(),
            &[("resource", PG_RESOURCE), ("api-version", "2019-08-01")],
        ))
        .header("X-IDENTITY-HEADER", fake.identity_header())
        .send()
        .await
        .unwrap(),
    )
    .await;
    let token = v["access_token"].as_str().unwrap();
    let client = pg.connect_tls("aad_app", token, "postgres").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn fake_az_cli() {
    let (_ca, fake, _http) = start(FakeAzureConfig::default()).await;
    let tmp = dbproxy_testkit::util::TempDir::new("az").unwrap();
    let dir = tmp.path();
    fake.install_fake_az(dir).unwrap();
    // tokio::process: the fake answers on this test's (single-threaded) runtime, so a
    // blocking std::process::Command::output() here would deadlock.
    let az = async |args: &[&str]| {
        tokio::process::Command::new(dir.join("az"))
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .await
            .unwrap()
    };
    let out = az(&[
        "account",
        "get-access-token",
        "-o",
        "json",
        "--scope",
        PG_SCOPE,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        keys(&v),
        [
            "accessToken",
            "expiresOn",
            "expires_on",
            "subscription",
            "tenant",
            "tokenType"
        ]
    );
    assert!(v["expires_on"].is_u64());
    let exp_text = v["expiresOn"].as_str().unwrap();
    assert_eq!(
        exp_text.len(),
        "2030-01-02 03:04:05.000000".len(),
        "{exp_text}"
    );
    assert_eq!(v["tenant"], fake.config().tenant_id.as_str());
    let t = fake.issued().pop().unwrap();
    assert_eq!((t.source, t.scope.as_str()), (TokenSource::AzCli, PG_SCOPE));
    assert_eq!(v["accessToken"], t.token.as_str());
    // with the right tenant
    let out = az(&[
        "account",
        "get-access-token",
        "--output",
        "json",
        "--scope",
        PG_SCOPE,
        "--tenant",
        &fake.config().tenant_id,
    ])
    .await;
    assert!(out.status.success());
    // unknown tenant
    let out = az(&[
        "account",
        "get-access-token",
        "-o",
        "json",
        "--scope",
        PG_SCOPE,
        "--tenant",
        "nope",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AADSTS90002"),
        "{stderr:?} {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    // other commands, logged out
    let login = "ERROR: Please run 'az login' to setup account.\n";
    let out = az(&["account", "show"]).await;
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (Some(1), login)
    );
    fake.set_az_logged_in(false);
    let out = az(&[
        "account",
        "get-access-token",
        "-o",
        "json",
        "--scope",
        PG_SCOPE,
    ])
    .await;
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (Some(1), login)
    );
    assert!(out.stdout.is_empty());
    // FakeAzure gone: a clean error, not a hang
    drop(fake);
    let out = az(&[
        "account",
        "get-access-token",
        "-o",
        "json",
        "--scope",
        PG_SCOPE,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("ERROR: "));
}

#[tokio::test]
async fn arm_list_keys() {
    let (_ca, fake, http) = start(FakeAzureConfig {
        cosmos_account: Some("acct1".into()),
        ..Default::default()
    })
    .await;
    let cfg = fake.config();
    let get_token = |scope: &'static str| {
        let form = vec![
            ("client_id", cfg.client_id.clone()),
            ("client_secret", cfg.client_secret.clone()),
            ("grant_type", "client_credentials".to_owned()),
            ("scope", scope.to_owned()),
        ];
        http.post(fake.token_url()).form(&form).send()
    };
    let (_, v) = json(
        get_token("https://management.azure.com/.default")
            .await
            .unwrap(),
    )
    .await;
    let arm_token = v["access_token"].as_str().unwrap().to_owned();
    let (_, v) = json(get_token(PG_SCOPE).await.unwrap()).await;
    let pg_token = v["access_token"].as_str().unwrap().to_owned();
    let list = |url: String, token: Option<&str>| {
        let mut rb = http.post(url).header("content-length", "0");
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    let (status, v) = json(
        list(fake.list_keys_url("acct1"), Some(&arm_token))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let k = fake.keys();
    assert_eq!(v["primaryMasterKey"], k.primary_master_key.as_str());
    assert_eq!(k.primary_master_key.len(), 88);
    assert_eq!(
        keys(&v),
        [
            "primaryMasterKey",
            "primaryReadonlyMasterKey",
            "secondaryMasterKey",
            "secondaryReadonlyMasterKey"
        ]
    );
    let (status, v) = json(
        list(fake.readonly_keys_url("acct1"), Some(&arm_token))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&v),
        ["primaryReadonlyMasterKey", "secondaryReadonlyMasterKey"]
    );

    let code = |v: &Value| v["error"]["code"].as_str().unwrap().to_owned();
    let (status, v) = json(list(fake.list_keys_url("acct1"), None).await.unwrap()).await;
    assert_eq!((status, code(&v).as_str()), (401, "AuthenticationFailed"));
    let (status, v) = json(
        list(fake.list_keys_url("acct1"), Some("garbage"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code(&v).as_str()),
        (401, "InvalidAuthenticationToken")
    );
    let (status, v) = json(
        list(fake.list_keys_url("acct1"), Some(&pg_token))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code(&v).as_str()),
        (401, "InvalidAuthenticationTokenAudience")
    );
    let (status, v) = json(
        list(fake.list_keys_url("other"), Some(&arm_token))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code(&v).as_str()), (404, "ResourceNotFound"));
    fake.set_arm_forbidden(true);
    let (status, v) = json(
        list(fake.list_keys_url("acct1"), Some(&arm_token))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code(&v).as_str()), (403, "AuthorizationFailed"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'Microsoft.DocumentDB/databaseAccounts/listKeys/action'")
    );
    fake.set_arm_forbidden(false);
    fake.set_arm_throttle(1);
    let resp = list(fake.list_keys_url("acct1"), Some(&arm_token))
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    let (status, v) = json(resp).await;
    assert_eq!((status, code(&v).as_str()), (429, "TooManyRequests"));
    let new_keys = dbproxy_testkit::azure::CosmosKeys::random();
    fake.set_keys(new_keys.clone());
    let (status, v) = json(
        list(fake.list_keys_url("acct1"), Some(&arm_token))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        v["secondaryMasterKey"],
        new_keys.secondary_master_key.as_str()
    );
}
