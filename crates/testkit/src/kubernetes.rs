//! [`FakeKube`]: the parts of the Kubernetes API that per-pod identity uses, over HTTPS with a
//! certificate of the test CA, each request checked for the bearer token
//! ([`FakeKube::token`]; 401 Status otherwise).
//!
//! * `GET /api/v1/pods?fieldSelector=spec.nodeName%3DNODE`: a PodList of that node's pods
//!   (`metadata.resourceVersion`); with `watch=true&resourceVersion=RV`, one JSON event a line
//!   (ADDED / MODIFIED / DELETED with the pod as it is after the change; an ERROR event with a
//!   410 Status when RV is older than the retained history), streamed until `timeoutSeconds`,
//!   [`FakeKube::set_down`] or the fake is dropped.
//! * `GET /api/v1/namespaces/NS/serviceaccounts/NAME`: the service account and its annotations.
//! * `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`: a TokenRequest; with a
//!   `boundObjectRef` to a pod, the pod must exist with that uid and run as that service
//!   account. The token is an RS256 JWT signed by the fake's issuer key
//!   ([`FakeKube::issuer_key`], `kid` set) with the claims of a pod-bound token: `aud` (the
//!   requested audiences), `exp` (now + `expirationSeconds`, at least 600), `iat`, `nbf`, `iss`
//!   ([`FakeKube::issuer`]), `jti`, `sub` `system:serviceaccount:NS:NAME` and `kubernetes.io`
//!   with `namespace`, `node`, `pod` and `serviceaccount` (names and uids).
//!
//! [`FakeKube::set_down`] answers 503 to everything and ends open watches (the API server
//! unreachable behind a load balancer).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
    routing::{get, post},
};
use tokio::{net::TcpListener, sync::broadcast, task::JoinHandle};

use crate::{
    azure::FederatedCredential,
    certs::{ClientCert, TestCa, b64url, try_client_rsa_cert},
    tokens,
};

/// A pod of the fake.
#[derive(Clone, Debug)]
pub struct FakePod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (set by [`FakeKube::add_pod`] when empty).
    pub uid: String,
    /// Service account.
    pub service_account: String,
    /// Node.
    pub node: String,
    /// IP (`status.podIP`).
    pub ip: String,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// Phase.
    pub phase: String,
}

impl FakePod {
    /// A running pod.
    pub fn running(namespace: &str, name: &str, sa: &str, node: &str, ip: &str) -> FakePod {
        FakePod {
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
            service_account: sa.into(),
            node: node.into(),
            ip: ip.into(),
            host_network: false,
            phase: "Running".into(),
        }
    }

    fn json(&self, rv: u64) -> serde_json::Value {
        serde_json::json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid, "resourceVersion": rv.to_string()},
            "spec": {"serviceAccountName": self.service_account, "nodeName": self.node, "hostNetwork": self.host_network, "containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": self.phase, "podIP": self.ip, "podIPs": [{"ip": self.ip}], "hostIP": "10.240.0.4"},
        })
    }
}

/// One TokenRequest the fake answered.
#[derive(Clone, Debug)]
pub struct IssuedSaToken {
    /// `NS/NAME` of the service account.
    pub service_account: String,
    /// The bound pod's name, if any.
    pub bound_pod: Option<String>,
    /// The audiences.
    pub audiences: Vec<String>,
    /// The lifetime asked for.
    pub expiration_seconds: u64,
    /// The token.
    pub token: String,
}

#[derive(Clone)]
struct Event {
    rv: u64,
    kind: &'static str,
    pod: FakePod,
}

/// A service account: its uid and annotations.
type Account = (String, Vec<(String, String)>);

struct State_ {
    rv: u64,
    pods: Vec<FakePod>,
    accounts: HashMap<(String, String), Account>,
    history: Vec<Event>,
    issued: Vec<IssuedSaToken>,
}

struct Shared {
    token: String,
    issuer: String,
    key: ClientCert,
    down: AtomicBool,
    state: Mutex<State_>,
    events: broadcast::Sender<Option<Event>>,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State_> {
    s.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake API server (see the module docs).
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FakeKube {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start(ca: &TestCa) -> anyhow::Result<FakeKube> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tls = ca
            .try_server_cert(&["127.0.0.1", "localhost"])?
            .rustls_server_config()?;
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            token: format!("fake-kube-proxy-sa-token-{}", tokens::random_b64url(24)),
            issuer: format!("https://oidc.fake-kube.test/{}/", tokens::random_guid()),
            key: try_client_rsa_cert("fake-kube-issuer")?,
            down: AtomicBool::new(false),
            state: Mutex::new(State_ {
                rv: 1000,
                pods: Vec::new(),
                accounts: HashMap::new(),
                history: Vec::new(),
                issued: Vec::new(),
            }),
            events,
        });
        let app = Router::new()
            .route("/api/v1/pods", get(pods))
            .route(
                "/api/v1/namespaces/{ns}/serviceaccounts/{name}",
                get(service_account),
            )
            .route(
                "/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
                post(token_request),
            )
            .with_state(shared.clone());
        let task = tokio::spawn(crate::azure::serve_https(
            listener,
            tokio_rustls::TlsAcceptor::from(tls),
            app,
        ));
        Ok(FakeKube { shared, addr, task })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bearer token the proxy must present (write it to its token file).
    pub fn token(&self) -> String {
        self.shared.token.clone()
    }

    /// The issuer of service-account tokens (`iss`).
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// The issuer's signing key.
    pub fn issuer_key(&self) -> &ClientCert {
        &self.shared.key
    }

    /// A federated credential trusting this issuer for `system:serviceaccount:NS:SA`.
    pub fn federated_credential(&self, client_id: &str, ns: &str, sa: &str) -> FederatedCredential {
        FederatedCredential {
            client_id: client_id.into(),
            issuer: self.issuer(),
            subject: format!("system:serviceaccount:{ns}:{sa}"),
            audiences: vec!["api://AzureADTokenExchange".into()],
            issuer_key_pkcs1_der: self.shared.key.public_key_pkcs1_der.clone(),
        }
    }

    /// Creates or replaces service account `ns/name` with `annotations`.
    pub fn set_service_account(&self, ns: &str, name: &str, annotations: &[(&str, &str)]) {
        let mut s = lock(&self.shared);
        let key = (ns.to_owned(), name.to_owned());
        let uid = s
            .accounts
            .get(&key)
            .map(|a| a.0.clone())
            .unwrap_or_else(tokens::random_guid);
        let ann = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.accounts.insert(key, (uid, ann));
    }

    fn emit(&self, s: &mut State_, kind: &'static str, pod: FakePod) {
        s.rv += 1;
        let e = Event {
            rv: s.rv,
            kind,
            pod,
        };
        s.history.push(e.clone());
        let _ = self.shared.events.send(Some(e));
    }

    /// Adds a pod (ADDED); returns it with its uid.
    pub fn add_pod(&self, mut pod: FakePod) -> FakePod {
        if pod.uid.is_empty() {
            pod.uid = tokens::random_guid();
        }
        let mut s = lock(&self.shared);
        s.pods.push(pod.clone());
        self.emit(&mut s, "ADDED", pod.clone());
        pod
    }

    /// Deletes pod `ns/name` (DELETED).
    pub fn delete_pod(&self, ns: &str, name: &str) {
        let mut s = lock(&self.shared);
        if let Some(i) = s
            .pods
            .iter()
            .position(|p| p.namespace == ns && p.name == name)
        {
            let pod = s.pods.remove(i);
            self.emit(&mut s, "DELETED", pod);
        }
    }

    /// While down: 503 to everything, open watches end.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self.shared.events.send(None);
        }
    }

    /// The TokenRequests answered so far.
    pub fn issued(&self) -> Vec<IssuedSaToken> {
        lock(&self.shared).issued.clone()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json"
            .parse()
            .unwrap_or(header::HeaderValue::from_static("application/json")),
    );
    r
}

fn json(v: serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn check(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if shared.down.load(Ordering::SeqCst) {
        return Err(Box::new(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )));
    }
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", shared.token));
    if ok {
        Ok(())
    } else {
        Err(Box::new(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        )))
    }
}

async fn pods(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = check(&shared, &headers) {
        return *r;
    }
    let q: Vec<(String, String)> = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let node =
        get("fieldSelector").and_then(|f| f.strip_prefix("spec.nodeName=").map(str::to_owned));
    let on_node = move |p: &FakePod| node.as_deref().is_none_or(|n| p.node == n);
    if get("watch").as_deref() != Some("true") {
        let s = lock(&shared);
        let items: Vec<_> = s
            .pods
            .iter()
            .filter(|p| on_node(p))
            .map(|p| p.json(s.rv))
            .collect();
        return json(
            serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        );
    }
    let from: u64 = get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut rx = shared.events.subscribe();
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let line = |e: &Event| {
        Bytes::from(format!(
            "{}\n",
            serde_json::json!({"type": e.kind, "object": e.pod.json(e.rv)})
        ))
    };
    let backlog: Result<Vec<Bytes>, ()> = {
        let s = lock(&shared);
        let oldest = s.history.first().map_or(s.rv, |e| e.rv - 1);
        if from < oldest.min(1000) {
            Err(())
        } else {
            Ok(s.history
                .iter()
                .filter(|e| e.rv > from && on_node(&e.pod))
                .map(line)
                .collect())
        }
    };
    let seconds: u64 = get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    tokio::spawn(async move {
        match backlog {
            Err(()) => {
                let gone = serde_json::json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
                let _ = tx.send(Ok(Bytes::from(format!("{gone}\n")))).await;
                return;
            }
            Ok(lines) => {
                for l in lines {
                    if tx.send(Ok(l)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(seconds));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                e = rx.recv() => match e {
                    Ok(Some(e)) if e.rv > from && on_node(&e.pod) => {
                        if tx.send(Ok(line(&e))).await.is_err() { return; }
                    }
                    Ok(Some(_)) => {}
                    // Down (or lagging): end the watch with a broken stream, as a dropped
                    // connection looks to the client.
                    Ok(None) | Err(_) => {
                        let _ = tx.send(Err(std::io::Error::other("connection reset"))).await;
                        return;
                    }
                },
            }
        }
    });
    let stream =
        futures_util::stream::unfold(
            body_rx,
            |mut rx| async move { rx.recv().await.map(|i| (i, rx)) },
        );
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn service_account(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check(&shared, &headers) {
        return *r;
    }
    let s = lock(&shared);
    match s.accounts.get(&(ns.clone(), name.clone())) {
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("serviceaccounts \"{name}\" not found"),
        ),
        Some((uid, ann)) => {
            let ann: serde_json::Map<String, serde_json::Value> = ann
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            json(
                serde_json::json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns, "uid": uid, "annotations": ann}}),
            )
        }
    }
}

async fn token_request(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Err(r) = check(&shared, &headers) {
        return *r;
    }
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a TokenRequest",
        );
    };
    let mut s = lock(&shared);
    let Some((sa_uid, _)) = s.accounts.get(&(ns.clone(), name.clone())).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("serviceaccounts \"{name}\" not found"),
        );
    };
    let spec = &req["spec"];
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let seconds = spec["expirationSeconds"].as_u64().unwrap_or(3600);
    if seconds < 600 {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "spec.expirationSeconds: may not specify a duration less than 10 minutes",
        );
    }
    let mut bound = None;
    if let Some(r) = spec["boundObjectRef"].as_object() {
        let pname = r.get("name").and_then(|v| v.as_str()).unwrap_or("");
        let puid = r.get("uid").and_then(|v| v.as_str()).unwrap_or("");
        match s.pods.iter().find(|p| p.namespace == ns && p.name == pname) {
            Some(p) if (puid.is_empty() || p.uid == puid) && p.service_account == name => {
                bound = Some(p.clone())
            }
            Some(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the bound pod's uid or service account does not match",
                );
            }
            None => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{pname}\" not found"),
                );
            }
        }
    }
    let now = tokens::now_epoch();
    let mut k8s =
        serde_json::json!({"namespace": ns, "serviceaccount": {"name": name, "uid": sa_uid}});
    if let Some(p) = &bound {
        k8s["pod"] = serde_json::json!({"name": p.name, "uid": p.uid});
        k8s["node"] = serde_json::json!({"name": p.node, "uid": tokens::random_guid()});
    }
    let claims = serde_json::json!({
        "aud": audiences, "exp": now + seconds, "iat": now, "nbf": now, "iss": shared.issuer,
        "jti": tokens::random_guid(), "kubernetes.io": k8s, "sub": format!("system:serviceaccount:{ns}:{name}"),
    });
    let header = serde_json::json!({"alg": "RS256", "kid": b64url(shared.issuer.as_bytes())});
    let Ok(token) = shared.key.client_assertion_with(header, claims) else {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "signing failed",
        );
    };
    s.issued.push(IssuedSaToken {
        service_account: format!("{ns}/{name}"),
        bound_pod: bound.as_ref().map(|p| p.name.clone()),
        audiences: audiences.clone(),
        expiration_seconds: seconds,
        token: token.clone(),
    });
    let exp = time::OffsetDateTime::from_unix_timestamp((now + seconds) as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    json(serde_json::json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": spec["boundObjectRef"]},
        "status": {"token": token, "expirationTimestamp": exp},
    }))
}
