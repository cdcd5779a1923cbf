//! Tests of [`CosmosKeySource`] against a fake ARM: request shape, caching, retries, error
//! messages, rotation and fallback, the periodic refresh, and that no key or token leaks.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{arm::MAX_ATTEMPTS, *};
use crate::{
    AccessToken, ErrorKind, TokenSource,
    testutil::{FakeHttp, Recorded, Reply},
};

const PATH: &str = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.DocumentDB/databaseAccounts/acct/listKeys";

/// ARM tokens `arm-token-0`, `arm-token-1`, …
struct ArmTokens {
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl TokenSource for ArmTokens {
    fn describe(&self) -> String {
        "fake arm identity".into()
    }
    async fn get_token(&self, scope: &str) -> Result<crate::AccessToken, CredentialError> {
        assert_eq!(scope, COSMOS_ARM_SCOPE);
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(AccessToken {
            token: Secret::new(format!("arm-token-{n}")),
            expires_on: SystemTime::now() + Duration::from_secs(3600),
        })
    }
}

fn keys(tag: &str) -> Reply {
    Reply::json(
        200,
        &format!(
            r#"{{"primaryMasterKey":"{tag}-P","secondaryMasterKey":"{tag}-S","primaryReadonlyMasterKey":"{tag}-RP","secondaryReadonlyMasterKey":"{tag}-RS"}}"#
        ),
    )
}

fn arm_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#),
    )
}

struct Setup {
    fake: FakeHttp,
    arm: Arc<ArmTokens>,
    src: Arc<CosmosKeySource>,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn source_for(
    url: Url,
    kind: CosmosKeyKind,
    refresh: Duration,
) -> (Arc<ArmTokens>, Arc<CosmosKeySource>) {
    let arm = Arc::new(ArmTokens {
        calls: AtomicUsize::new(0),
    });
    let token = TokenCache::new(
        arm.clone(),
        COSMOS_ARM_SCOPE.into(),
        RefreshPolicy::default(),
    );
    let src = CosmosKeySource::with_retry_base(
        token,
        url,
        kind,
        http(),
        refresh,
        Duration::from_millis(20),
    );
    (arm, src)
}

async fn setup(replies: Vec<Reply>, kind: CosmosKeyKind, refresh: Duration) -> Setup {
    let fake = FakeHttp::start(replies).await;
    let url = fake
        .url()
        .join(&format!("{PATH}?api-version=2021-04-15"))
        .unwrap();
    let (arm, src) = source_for(url, kind, refresh);
    Setup { fake, arm, src }
}

fn headers_named(r: &Recorded, name: &str) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

#[test]
fn urls_and_kinds() {
    let u = Url::parse("https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/a/listKeys?api-version=2021-04-15").unwrap();
    assert_eq!(key_url(&u, CosmosKeyKind::Primary), u);
    assert_eq!(
        key_url(&u, CosmosKeyKind::ReadOnlySecondary).as_str(),
        "https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/a/readonlykeys?api-version=2021-04-15"
    );
    let acct = Url::parse("https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/a/").unwrap();
    assert_eq!(
        key_url(&acct, CosmosKeyKind::Secondary).as_str(),
        "https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/a/listKeys?api-version=2021-04-15"
    );
    assert_eq!(CosmosKeyKind::default(), CosmosKeyKind::Primary);
    for k in [
        CosmosKeyKind::Primary,
        CosmosKeyKind::Secondary,
        CosmosKeyKind::ReadOnlyPrimary,
        CosmosKeyKind::ReadOnlySecondary,
    ] {
        assert_eq!(k.as_str().parse::<CosmosKeyKind>(), Ok(k));
    }
    assert_eq!(
        "Read_Only_Secondary".parse::<CosmosKeyKind>(),
        Ok(CosmosKeyKind::ReadOnlySecondary)
    );
    assert!("tertiary".parse::<CosmosKeyKind>().is_err());
}

#[tokio::test]
async fn happy_path_request_shape_and_cache() {
    let s = setup(vec![keys("A")], CosmosKeyKind::Primary, DEFAULT_KEY_REFRESH).await;
    assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
    assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
    let reqs = s.fake.requests();
    assert_eq!(reqs.len(), 1, "cached after the first fetch");
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path(), PATH);
    assert_eq!(r.query("api-version").as_deref(), Some("2021-04-15"));
    assert_eq!(
        r.header("authorization").as_deref(),
        Some("Bearer arm-token-0")
    );
    assert_eq!(headers_named(r, "content-length"), vec!["0".to_owned()]);
    assert_eq!(r.body, "");
    let st = s.src.status();
    assert_eq!((st.refreshes_ok, st.refreshes_failed), (1, 0));
    assert!(st.last_success.is_some() && st.last_error.is_none() && st.expires_on.is_none());
    assert!(
        s.src
            .describe()
            .contains("Cosmos DB primary key from http://127.0.0.1")
    );
    assert!(s.src.describe().contains("fake arm identity"));
}

#[tokio::test]
async fn concurrent_callers_share_one_fetch() {
    let s = setup(vec![keys("A")], CosmosKeyKind::Primary, DEFAULT_KEY_REFRESH).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let src = s.src.clone();
        tasks.push(tokio::spawn(async move { src.password().await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().expose(), "A-P");
    }
    assert_eq!(s.fake.requests().len(), 1);
}

#[tokio::test]
async fn read_only_kind_uses_readonlykeys() {
    let ro = Reply::json(
        200,
        r#"{"primaryReadonlyMasterKey":"R-RP","secondaryReadonlyMasterKey":"R-RS"}"#,
    );
    let s = setup(
        vec![ro],
        CosmosKeyKind::ReadOnlyPrimary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    assert_eq!(s.src.kind(), CosmosKeyKind::ReadOnlyPrimary);
    assert_eq!(s.src.password().await.unwrap().expose(), "R-RP");
    let r = &s.fake.requests()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path(),
        PATH.replace("/listKeys", "/readonlykeys").as_str()
    );
    assert_eq!(r.query("api-version").as_deref(), Some("2021-04-15"));
    // Fallback is the other read-only key.
    let k = s.src.password().await.unwrap();
    assert_eq!(
        s.src.after_rejection(&k).await.unwrap().unwrap().expose(),
        "R-RS"
    );
}

#[tokio::test]
async fn throttled_429_honours_retry_after() {
    let s = setup(
        vec![
            arm_error(429, "TooManyRequests", "throttled").with_header("Retry-After", "1"),
            keys("A"),
        ],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let start = std::time::Instant::now();
    assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(s.fake.requests().len(), 2);
}

#[tokio::test]
async fn server_errors_retry_with_backoff_then_give_up() {
    let s = setup(
        vec![
            arm_error(503, "ServiceUnavailable", "try later"),
            arm_error(500, "InternalServerError", "oops"),
            keys("A"),
        ],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
    assert_eq!(s.fake.requests().len(), 3);

    let s = setup(
        vec![arm_error(503, "ServiceUnavailable", "try later")],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let e = s.src.password().await.unwrap_err();
    assert_eq!(s.fake.requests().len(), MAX_ATTEMPTS as usize);
    assert_eq!(e.kind(), ErrorKind::Rejected);
    let msg = e.to_string();
    assert!(
        msg.contains("HTTP 503: ServiceUnavailable (try later)"),
        "{msg}"
    );
    assert!(msg.contains("gave up"), "{msg}");
    // A throttle longer than the total budget is not waited for.
    let s = setup(
        vec![arm_error(429, "TooManyRequests", "slow down").with_header("Retry-After", "3600")],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let e = tokio::time::timeout(Duration::from_secs(5), s.src.password())
        .await
        .expect("no hour-long wait")
        .unwrap_err();
    assert!(e.to_string().contains("429"), "{e}");
    assert_eq!(s.fake.requests().len(), 1);
}

#[tokio::test]
async fn transport_errors_are_retried_and_reported() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let url = Url::parse(&format!(
        "http://127.0.0.1:{port}{PATH}?api-version=2021-04-15"
    ))
    .unwrap();
    let (arm, src) = source_for(url, CosmosKeyKind::Primary, DEFAULT_KEY_REFRESH);
    let e = src.password().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(e.to_string().contains("listKeys"), "{e}");
    assert_eq!(
        arm.calls.load(Ordering::SeqCst),
        1,
        "one ARM token for all attempts"
    );
    assert_eq!(src.status().refreshes_failed, 1);
}

#[tokio::test]
async fn non_https_url_is_refused() {
    let url = Url::parse(&format!(
        "http://management.example{PATH}?api-version=2021-04-15"
    ))
    .unwrap();
    let (arm, src) = source_for(url, CosmosKeyKind::Primary, DEFAULT_KEY_REFRESH);
    let e = src.password().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("must be an https URL"), "{e}");
    assert_eq!(
        arm.calls.load(Ordering::SeqCst),
        0,
        "no token sent anywhere"
    );
}

#[tokio::test]
async fn forbidden_names_the_permission() {
    let msg = "The client 'x' with object id 'y' does not have authorization to perform action 'Microsoft.DocumentDB/databaseAccounts/listKeys/action' over scope '/subscriptions/sub' or the scope is invalid.";
    let s = setup(
        vec![arm_error(403, "AuthorizationFailed", msg)],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let e = s.src.password().await.unwrap_err();
    assert_eq!(s.fake.requests().len(), 1, "no retry");
    let text = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    for want in [
        "HTTP 403",
        "AuthorizationFailed",
        "lacks the permission Microsoft.DocumentDB/databaseAccounts/listKeys/action",
        "DocumentDB Account Contributor",
        "Cosmos DB Account Reader",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
    assert!(
        s.src
            .status()
            .last_error
            .unwrap()
            .contains("listKeys/action")
    );

    // Read-only kinds need …/readonlykeys/action.
    let s = setup(
        vec![arm_error(403, "AuthorizationFailed", "no")],
        CosmosKeyKind::ReadOnlySecondary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let text = s.src.password().await.unwrap_err().to_string();
    assert!(
        text.contains("Microsoft.DocumentDB/databaseAccounts/readonlykeys/action"),
        "{text}"
    );
    assert!(text.contains("Cosmos DB Account Reader Role"), "{text}");
}

#[tokio::test]
async fn not_found_says_so() {
    let s = setup(
        vec![arm_error(
            404,
            "ResourceNotFound",
            "The Resource 'Microsoft.DocumentDB/databaseAccounts/acct' under resource group 'rg' was not found.",
        )],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let text = s.src.password().await.unwrap_err().to_string();
    assert!(text.contains("ResourceNotFound"), "{text}");
    assert!(
        text.contains("account or the listKeys URL was not found"),
        "{text}"
    );
    assert!(text.contains("AZURE_COSMOS_LISTKEYURL"), "{text}");
    assert!(!text.contains("api-version="), "no query string: {text}");
}

#[tokio::test]
async fn unauthorized_refreshes_the_arm_token_once() {
    let s = setup(
        vec![
            arm_error(
                401,
                "ExpiredAuthenticationToken",
                "The access token expiry UTC time is earlier than current UTC time.",
            ),
            keys("A"),
        ],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
    let reqs = s.fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].header("authorization").as_deref(),
        Some("Bearer arm-token-0")
    );
    assert_eq!(
        reqs[1].header("authorization").as_deref(),
        Some("Bearer arm-token-1")
    );
    assert_eq!(s.arm.calls.load(Ordering::SeqCst), 2);

    // Twice in a row: reported, with no further attempts.
    let s = setup(
        vec![arm_error(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let e = s.src.password().await.unwrap_err();
    assert_eq!(s.fake.requests().len(), 2);
    let text = e.to_string();
    assert!(
        text.contains("HTTP 401: InvalidAuthenticationToken"),
        "{text}"
    );
    assert!(text.contains(COSMOS_ARM_SCOPE), "{text}");
}

#[tokio::test]
async fn after_rejection_rotation_then_fallback_then_none() {
    let s = setup(
        vec![keys("A"), keys("B")],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let a = s.src.password().await.unwrap();
    assert_eq!(a.expose(), "A-P");
    // Rotated: the re-fetched primary differs.
    let b = s.src.after_rejection(&a).await.unwrap().unwrap();
    assert_eq!(b.expose(), "B-P");
    assert_eq!(s.fake.requests().len(), 2);
    assert_eq!(s.src.password().await.unwrap(), b);
    // Another connection reporting the old key: moves on without a fetch.
    assert_eq!(s.src.after_rejection(&a).await.unwrap(), Some(b.clone()));
    assert_eq!(s.fake.requests().len(), 2);
    // Same keys again: fall back to the secondary.
    let b2 = s.src.after_rejection(&b).await.unwrap().unwrap();
    assert_eq!(b2.expose(), "B-S");
    assert_eq!(s.fake.requests().len(), 3);
    assert_eq!(s.src.password().await.unwrap(), b2);
    // Both refused.
    assert_eq!(s.src.after_rejection(&b2).await.unwrap(), None);
    assert_eq!(s.fake.requests().len(), 4);
    // password() still answers (without a fetch) with a key of the pair.
    assert_eq!(s.src.password().await.unwrap(), b2);
    assert_eq!(s.fake.requests().len(), 4);
}

#[tokio::test]
async fn secondary_kind_falls_back_to_primary() {
    let s = setup(
        vec![keys("A")],
        CosmosKeyKind::Secondary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let k = s.src.password().await.unwrap();
    assert_eq!(k.expose(), "A-S");
    assert_eq!(
        s.src.after_rejection(&k).await.unwrap().unwrap().expose(),
        "A-P"
    );
}

#[tokio::test]
async fn after_rejection_fetch_failure_is_an_error_and_keeps_the_key() {
    let s = setup(
        vec![keys("A"), arm_error(403, "AuthorizationFailed", "no")],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let a = s.src.password().await.unwrap();
    let e = s.src.after_rejection(&a).await.unwrap_err();
    assert!(e.to_string().contains("listKeys/action"), "{e}");
    assert_eq!(s.src.password().await.unwrap(), a);
}

#[tokio::test]
async fn periodic_refresh_replaces_the_key_and_survives_failures() {
    let s = setup(
        vec![
            keys("A"),
            keys("B"),
            arm_error(403, "AuthorizationFailed", "role removed"),
        ],
        CosmosKeyKind::Primary,
        Duration::from_millis(300),
    )
    .await;
    let Setup { fake, src, .. } = s;
    let h = src.spawn_refresher();
    assert_eq!(src.password().await.unwrap().expose(), "A-P");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while src.password().await.unwrap().expose() != "B-P" {
        assert!(std::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while src.status().refreshes_failed == 0 {
        assert!(std::time::Instant::now() < deadline, "no failing refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The failed refresh keeps the key, answered without waiting.
    let k = tokio::time::timeout(Duration::from_millis(50), src.password())
        .await
        .expect("no waiting while a key is cached")
        .unwrap();
    assert_eq!(k.expose(), "B-P");
    let st = src.status();
    assert_eq!(st.refreshes_ok, 2);
    assert!(st.last_error.unwrap().contains("AuthorizationFailed"));
    assert!(fake.requests().len() >= 3);
    drop(src);
    tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .expect("the refresher ends with the source")
        .unwrap();
}

#[tokio::test]
async fn no_key_or_token_in_debug_errors_or_logs() {
    let (buf, _guard) = crate::testutil::LogCapture::start();

    let s = setup(
        vec![
            keys("SENTINEL-A"),
            keys("SENTINEL-B"),
            // ARM never echoes keys or tokens, but scrub anyway.
            arm_error(
                403,
                "AuthorizationFailed",
                "denied for arm-token-0 SENTINEL-B-P",
            ),
            arm_error(401, "InvalidAuthenticationToken", "bad arm-token-0"),
            // A 200 lacking the wanted key, with the others present.
            Reply::json(200, r#"{"secondaryMasterKey":"SENTINEL-C-S"}"#),
            Reply::json(200, "SENTINEL-D not json"),
        ],
        CosmosKeyKind::Primary,
        DEFAULT_KEY_REFRESH,
    )
    .await;
    let mut texts = vec![format!("{:?}", s.src), s.src.describe()];
    let a = s.src.password().await.unwrap();
    texts.push(format!("{a:?} {a}"));
    let b = s.src.after_rejection(&a).await.unwrap().unwrap();
    texts.push(format!("{b:?}"));
    for _ in 0..4 {
        // Past the 1 s "report the last failure again" window each time.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        match s.src.after_rejection(&b).await {
            Ok(k) => texts.push(format!("{k:?}")),
            Err(e) => {
                texts.push(e.to_string());
                texts.push(format!("{e:?}"));
            }
        }
    }
    texts.push(format!("{:?} {:?}", s.src.status(), s.src));
    let all = texts.join("\n");
    drop(_guard);
    let logs = buf.text();
    // Every failure was seen, by a caller or by the background refresh (which one depends on
    // timing on a loaded machine), so the leak checks below cover every error path.
    let seen = format!("{all}\n{logs}");
    assert!(seen.contains("AuthorizationFailed"), "{seen}");
    assert!(seen.contains("no primaryMasterKey in the answer"), "{seen}");
    assert!(seen.contains("not JSON"), "{seen}");
    assert!(
        logs.contains("Cosmos DB account key"),
        "the logs were captured: {logs}"
    );
    for (what, text) in [("output", &all), ("logs", &logs)] {
        assert!(!text.contains("SENTINEL"), "{what} leaks a key: {text}");
        assert!(!text.contains("arm-token-"), "{what} leaks a token: {text}");
    }
}
