use super::parse::{
    MAX_WATCH_LINE, WatchLines, parse_event, pod_list, service_account, status_message,
    token_response,
};
use super::*;

#[test]
fn events_parse() {
    let e = parse_event(
        br#"{"type":"ADDED","object":{"metadata":{"name":"a","namespace":"n","uid":"u","resourceVersion":"7"},"spec":{"serviceAccountName":"sa","nodeName":"node1","hostNetwork":false},"status":{"phase":"Running","podIP":"10.0.0.5","podIPs":[{"ip":"10.0.0.5"}]}}}"#,
        "x",
    )
    .unwrap();
    let WatchEvent::Added(p) = e else { panic!() };
    assert_eq!(p.spec.service_account_name.as_deref(), Some("sa"));
    assert_eq!(p.status.pod_ip.as_deref(), Some("10.0.0.5"));
    let e = parse_event(br#"{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old resource version"}}"#, "x").unwrap();
    assert!(matches!(e, WatchEvent::Error { code: 410, .. }));
    assert!(parse_event(b"garbage", "x").is_err());
}

#[test]
fn in_cluster_defaults() {
    let env = Env::from_pairs([
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ]);
    let c = KubeConfig::in_cluster(&env, None, None, None).unwrap();
    assert_eq!(c.api_server.as_str(), "https://10.0.0.1/");
    assert_eq!(
        c.token_file,
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
    let env = Env::from_pairs([
        ("KUBERNETES_SERVICE_HOST", "fd00::1"),
        ("KUBERNETES_SERVICE_PORT", "6443"),
    ]);
    let c = KubeConfig::in_cluster(&env, None, None, None).unwrap();
    assert_eq!(c.api_server.as_str(), "https://[fd00::1]:6443/");
    let e = KubeConfig::in_cluster(
        &Env::from_pairs::<[(&str, &str); 0], _, _>([]),
        None,
        None,
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("--kubernetes-api"), "{e}");
}

const ADDED: &str = r#"{"type":"ADDED","object":{"metadata":{"name":"a","namespace":"n","uid":"u1","resourceVersion":"7"},"spec":{"serviceAccountName":"sa","hostNetwork":false},"status":{"phase":"Running","podIP":"10.0.0.5"}}}"#;
const DELETED: &str = r#"{"type":"DELETED","object":{"metadata":{"name":"a","namespace":"n","uid":"u1","resourceVersion":"8"}}}"#;
const BOOKMARK: &str =
    r#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"9"}}}"#;

#[test]
fn pod_lists_parse() {
    let (items, rv) = pod_list(
        br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1234"},"items":[{"metadata":{"name":"a","namespace":"n","uid":"u1"},"spec":{"hostNetwork":true},"status":{"phase":"Running","podIPs":[{"ip":"10.0.0.5"},{"ip":"fd00::5"}]}},{}]}"#,
        "GET /api/v1/pods",
    )
    .unwrap();
    assert_eq!(rv, "1234");
    assert_eq!(items.len(), 2);
    assert!(items[0].spec.host_network);
    assert_eq!(items[0].status.pod_ips.len(), 2);
    assert_eq!(items[1].metadata.uid, "");
    // No items, no metadata: an empty list.
    assert_eq!(pod_list(b"{}", "x").unwrap().0.len(), 0);
    let e = pod_list(br#"{"items":{}}"#, "GET /api/v1/pods").unwrap_err();
    assert!(
        matches!(&e, KubeError::Parse { endpoint, .. } if endpoint == "GET /api/v1/pods"),
        "{e:?}"
    );
    assert!(pod_list(b"", "x").is_err());
}

#[test]
fn service_accounts_parse() {
    let sa = service_account(
        br#"{"kind":"ServiceAccount","metadata":{"name":"sa","namespace":"n","annotations":{"azure.workload.identity/client-id":"cid"}}}"#,
        "GET /api/v1/namespaces/n/serviceaccounts/sa",
    )
    .unwrap();
    assert_eq!(
        sa.annotations
            .get("azure.workload.identity/client-id")
            .map(String::as_str),
        Some("cid")
    );
    assert!(service_account(b"{}", "x").unwrap().annotations.is_empty());
    assert!(service_account(br#"{"metadata":{"annotations":{"a":1}}}"#, "x").is_err());
}

#[test]
fn token_responses_parse_and_never_quote_the_body() {
    let t = token_response(
        br#"{"kind":"TokenRequest","status":{"token":"eyJ.secret.tok","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#,
        "POST /t",
    )
    .unwrap();
    assert_eq!(t.expose(), "eyJ.secret.tok");
    assert!(!format!("{t:?} {t}").contains("secret"));
    for body in [
        &br#"{"status":{"token":"eyJ.secret.tok""#[..],
        br#"{"status":{"token":""}}"#,
        br#"{"status":{"tok":"eyJ.secret.tok"}}"#,
        br#"{"status":{"token":7}}"#,
    ] {
        let e = token_response(body, "POST /t").unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("secret") && !shown.contains('7'), "{shown}");
    }
}

#[test]
fn status_messages() {
    assert_eq!(
        status_message(
            r#"{"kind":"Status","status":"Failure","message":"pods is forbidden","reason":"Forbidden","code":403}"#
        ),
        "pods is forbidden"
    );
    assert_eq!(status_message(r#"{"reason":"NotFound"}"#), "NotFound");
    assert_eq!(
        status_message(&format!(r#"{{"message":"{}"}}"#, "é".repeat(400)))
            .chars()
            .count(),
        300
    );
    assert_eq!(status_message(&"x".repeat(500)).len(), 200);
    assert_eq!(status_message("<html>"), "<html>");
}

/// The watch stream gives the same events whatever its chunking; blank lines are skipped, a
/// line waits for its newline, a bad line is an error.
#[test]
fn watch_lines_in_any_chunks() {
    let stream = format!("{ADDED}\n\n \r\n{BOOKMARK}\n{DELETED}\n{ADDED}");
    for size in [1, 2, 7, 100, stream.len()] {
        let mut lines = WatchLines::default();
        let mut seen = Vec::new();
        for chunk in stream.as_bytes().chunks(size) {
            lines
                .feed(chunk, "w", &mut |e| seen.push(format!("{e:?}")))
                .unwrap();
        }
        assert_eq!(seen.len(), 3, "chunks of {size}");
        assert!(seen[0].starts_with("Added(") && seen[1] == "Bookmark(\"9\")");
        assert!(seen[2].starts_with("Deleted("));
        assert_eq!(lines.pending(), ADDED.len());
    }
    let mut lines = WatchLines::default();
    let e = lines
        .feed(b"{\"type\":\"NOPE\",\"object\":{}}\n", "w", &mut |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("unknown watch event type"), "{e}");
    let mut lines = WatchLines::default();
    let long = vec![b' '; MAX_WATCH_LINE + 1];
    assert!(lines.feed(&long, "w", &mut |_| {}).is_err());
}
