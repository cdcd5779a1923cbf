//! The HTTP plumbing shared by both listeners: the axum router (every endpoint of the fake,
//! plus a JSON 404), the middleware that counts and records each request (and makes the token
//! endpoints hang when asked, see [`super::faults`]), and the accept loop
//! (plain or TLS) whose connections end when its task is aborted.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Router,
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
    routing::{get, post},
};
use tokio::net::TcpListener;

use super::{
    RecordedRequest, Shared, arm, cli, entra, faults, json_response, lock, managed, obj, s,
};

/// Every route of both listeners, behind the request recorder.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    let acct = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/databaseAccounts/{acct}";
    Router::new()
        .route("/metadata/identity/oauth2/token", get(managed::imds))
        .route("/MSI/token", get(managed::app_service))
        .route("/{tenant}/oauth2/v2.0/token", post(entra::token))
        .route(cli::HELPER_PATH, get(cli::helper))
        .route(&format!("{acct}/listKeys"), post(arm::keys))
        .route(
            &format!("{acct}/readonlykeys"),
            get(arm::keys).post(arm::keys),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(shared.clone(), record))
        .with_state(shared)
}

async fn record(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    shared.request_count.fetch_add(1, Ordering::SeqCst);
    let rec = RecordedRequest {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        at: std::time::Instant::now(),
    };
    lock(&shared.requests).push(rec);
    let hang = *lock(&shared.hang);
    if hang != faults::Hang::No && faults::is_identity_path(req.uri().path()) {
        shared.hung.fetch_add(1, Ordering::SeqCst);
        return faults::hang(hang).await;
    }
    next.run(req).await
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        obj(&[
            ("error", s("not_found")),
            ("error_description", s("No such endpoint on the fake")),
        ]),
    )
}

/// Accept loop; connections live in a JoinSet so aborting this task closes them all.
pub(super) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let app = app.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                }
            }
        });
    }
}

/// The accept loop over TLS only (other fakes of the testkit).
pub(crate) async fn serve_https(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    app: Router,
) {
    serve(listener, Some(tls), app).await
}
