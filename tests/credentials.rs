//! Each credential kind, end to end: the proxy gets a token from the fake, the fake sets the
//! role's password to it, psql logs in through the proxy.

use dbproxy_testkit::{
    azure::{FakeAzureConfig, TokenSource},
    certs::client_rsa_cert,
    postgres::PasswordAuth,
};

use crate::stack::{ENTRA_USER, Stack, psql};

fn assert_issued_by(s: &Stack, source: TokenSource) {
    let issued = s.azure.issued();
    assert!(
        issued
            .iter()
            .any(|t| t.source == source && t.resource == crate::stack::PG_RESOURCE),
        "no token issued by {source:?}: {:?}",
        issued
            .iter()
            .map(|t| (t.source, t.resource.clone()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn imds_system_assigned_through_the_override() {
    let s = Stack::start().await;
    let proxy = s
        .proxy()
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", s.azure.imds_url())
        .args(["--credential", "managed-identity"])
        .spawn();
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    assert_issued_by(&s, TokenSource::Imds);
}

#[tokio::test(flavor = "multi_thread")]
async fn imds_user_assigned_by_service_connector_client_id() {
    let cfg = FakeAzureConfig {
        managed_identity_client_id: Some("3c5e7a9b-1d2f-4a6b-8c0d-e1f2a3b4c5d6".into()),
        ..FakeAzureConfig::default()
    };
    let s = Stack::with(PasswordAuth::Password, cfg).await;
    // AZURE_POSTGRESQL_CLIENTID alone means a user-assigned managed identity; the IMDS address
    // comes from the flag this time.
    let proxy = s
        .proxy()
        .args(["--imds-endpoint", &s.azure.imds_url()])
        .env(
            "AZURE_POSTGRESQL_CLIENTID",
            "3c5e7a9b-1d2f-4a6b-8c0d-e1f2a3b4c5d6",
        )
        .spawn();
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    let t = s
        .azure
        .issued()
        .into_iter()
        .find(|t| t.source == TokenSource::Imds)
        .unwrap();
    assert_eq!(
        t.client_id.as_deref(),
        Some("3c5e7a9b-1d2f-4a6b-8c0d-e1f2a3b4c5d6")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn app_service_identity_endpoint() {
    let s = Stack::start().await;
    let proxy = s
        .proxy()
        .env("IDENTITY_ENDPOINT", s.azure.identity_endpoint())
        .env("IDENTITY_HEADER", s.azure.identity_header())
        .spawn(); // no --credential: the default chain finds the App Service endpoint
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    assert_issued_by(&s, TokenSource::AppService);
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_identity_from_the_aks_environment() {
    let federated =
        dbproxy_testkit::tokens::jwt_like(900, "api://AzureADTokenExchange", 4_000_000_000);
    let cfg = FakeAzureConfig {
        federated_token: Some(federated.clone()),
        ..FakeAzureConfig::default()
    };
    let s = Stack::with(PasswordAuth::Password, cfg).await;
    let token_file = s.dir.join("azure-identity-token");
    std::fs::write(&token_file, &federated).unwrap();
    let c = s.azure.config();
    let mut proxy = s
        .proxy()
        .env("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap())
        .env("AZURE_CLIENT_ID", c.client_id)
        .env("AZURE_TENANT_ID", c.tenant_id)
        .spawn();
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    assert_issued_by(&s, TokenSource::Federated);
    // The default chain says which source answered.
    proxy.wait_for_line(
        |l| {
            l.contains("using this credential source")
                && l.contains("\"source\":\"workload identity")
        },
        std::time::Duration::from_secs(5),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn service_principal_with_a_certificate() {
    let cert = client_rsa_cert("entra-db-proxy test sp");
    let cfg = FakeAzureConfig {
        client_cert: Some(cert.clone()),
        ..FakeAzureConfig::default()
    };
    let s = Stack::with(PasswordAuth::Password, cfg).await;
    let pem = s.dir.join("sp.pem");
    cert.write_combined_pem(&pem).unwrap();
    let c = s.azure.config();
    let proxy = s
        .proxy()
        .args([
            "--credential",
            "client-certificate",
            "--tenant-id",
            &c.tenant_id,
            "--client-id",
            &c.client_id,
        ])
        .args(["--client-certificate", pem.to_str().unwrap()])
        .spawn();
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    assert_issued_by(&s, TokenSource::ClientCertificate);
}

#[tokio::test(flavor = "multi_thread")]
async fn service_principal_with_a_secret_from_standard_variables() {
    let s = Stack::start().await;
    let c = s.azure.config();
    let proxy = s
        .proxy()
        .env("AZURE_CLIENT_ID", c.client_id)
        .env("AZURE_TENANT_ID", c.tenant_id)
        .env("AZURE_CLIENT_SECRET", c.client_secret)
        .spawn();
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    assert_issued_by(&s, TokenSource::ClientSecret);
}

/// A laptop: no service principal, no workload identity, an IMDS address that never answers.
/// The chain must reach the Azure CLI quickly and stick to it.
#[tokio::test(flavor = "multi_thread")]
async fn default_chain_on_a_laptop_falls_through_to_azure_cli() {
    let s = Stack::start().await;
    let bin = s.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    s.azure.install_fake_az(&bin).unwrap();
    let started = std::time::Instant::now();
    let mut proxy = s.proxy().spawn_with_path(Some(&bin));
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    let elapsed = started.elapsed();
    assert_issued_by(&s, TokenSource::AzCli);
    proxy.wait_for_line(
        |l| l.contains("using this credential source") && l.contains("\"source\":\"Azure CLI\""),
        std::time::Duration::from_secs(5),
    );
    proxy.wait_for_line(
        |l| l.contains("source not usable") && l.contains("no IMDS endpoint answered"),
        std::time::Duration::from_secs(5),
    );
    // Not a timing assertion on the proxy's speed: a guard against the SDK-style 70 s IMDS retry.
    assert!(
        elapsed < std::time::Duration::from_secs(20),
        "the chain stalled for {elapsed:?}"
    );
    // Sticks to the CLI: a second session does not probe IMDS again.
    let probes_before = proxy.lines().iter().filter(|l| l.contains("IMDS")).count();
    assert_eq!(psql(proxy.port(), "select 1").trim(), "1");
    let probes_after = proxy.lines().iter().filter(|l| l.contains("IMDS")).count();
    assert_eq!(probes_before, probes_after);
}
