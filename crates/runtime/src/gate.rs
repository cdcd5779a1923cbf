//! Admission by client identity: who is behind a connection, and whether they may use the
//! listener.
//!
//! A [`Gated`] service wraps a protocol service. At accept it asks its [`Admission`] about the
//! connection's [`Peer`] (the source address of a TCP client; the uid of a Unix-socket
//! client, from `SO_PEERCRED`). An admitted client is served by the service the admission
//! hands back — for per-pod identity, one built for that pod's service account, with its own
//! database user and credential — inside a span naming the pod and the service account, so
//! every log line of the session says whom it served. A refused client is told why in its
//! protocol's terms ([`Refuse`]: PostgreSQL 28000, a CQL authentication error) and never
//! reaches the upstream. Sessions and refusals are counted per identity in
//! [`IdentityMetrics`], with a bounded label set.

use std::{net::SocketAddr, sync::Arc};

use tracing::Instrument;

use crate::{escape::Escaped, listener::Service, metrics::IdentityMetrics, stream::ClientStream};

/// Who is on the other end of a connection, as the kernel tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client and its source address.
    Tcp(SocketAddr),
    /// A Unix-socket client and its uid (`SO_PEERCRED`; `None` if it could not be read).
    Unix {
        /// The client process's effective uid.
        uid: Option<u32>,
    },
    /// No address could be read.
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{}", a.ip()),
            Peer::Unix { uid: Some(u) } => write!(f, "uid {u}"),
            Peer::Unix { uid: None } => write!(f, "a Unix-socket client of unknown uid"),
            Peer::Unknown => write!(f, "an unknown peer"),
        }
    }
}

/// The peer of a freshly accepted stream.
pub fn peer_of(stream: &ClientStream) -> Peer {
    match stream {
        ClientStream::Tcp(s) => s.peer_addr().map_or(Peer::Unknown, Peer::Tcp),
        ClientStream::Unix(s) => Peer::Unix {
            uid: s.peer_cred().ok().map(|c| c.uid()),
        },
        _ => Peer::Unknown,
    }
}

/// A client the admission let in, and the service that serves it.
pub struct Admitted<S> {
    /// The service for this identity (its user and credential).
    pub service: Arc<S>,
    /// The pod (`namespace/name`) or the host process (`uid N`), for logs.
    pub client: String,
    /// The service account (`namespace/name`), or empty, for logs and the metric label.
    pub identity: String,
}

/// Why a client was refused.
#[derive(Debug, Clone)]
pub struct NotAdmitted {
    /// What the client (and the log) is told: why, and what to configure. Never a secret.
    pub message: String,
    /// The service account, if the client was identified (metric label; else `unknown`).
    pub identity: Option<String>,
    /// A short reason for the metric label: `unknown_pod`, `host_network`, `policy`,
    /// `no_client_id`, `no_user`, `api_unavailable`, `uid`.
    pub reason: &'static str,
}

/// Decides who may use a listener, and as whom they log in.
#[async_trait::async_trait]
pub trait Admission<S>: Send + Sync + 'static {
    /// Admits or refuses `peer`.
    async fn admit(&self, peer: &Peer) -> Result<Admitted<S>, NotAdmitted>;
}

/// A protocol service that can refuse a client in its own terms.
pub trait Refuse: Service {
    /// Reads the client's opening (so its driver shows the message), answers it with an
    /// authentication error carrying `why`, and closes.
    fn refuse(
        self: Arc<Self>,
        stream: ClientStream,
        why: String,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// A service behind an [`Admission`].
pub struct Gated<S> {
    /// Answers refused and over-cap clients (the listener's own settings).
    pub fallback: Arc<S>,
    /// Who may come in.
    pub admission: Arc<dyn Admission<S>>,
    /// Sessions and refusals per identity.
    pub metrics: IdentityMetrics,
}

impl<S: Refuse> Service for Gated<S> {
    async fn serve(self: Arc<Self>, stream: ClientStream, peer_text: String) {
        let peer = peer_of(&stream);
        match self.admission.admit(&peer).await {
            Ok(a) => {
                self.metrics.admitted(&a.identity);
                let span = tracing::info_span!(
                    "identity",
                    pod = %Escaped(&a.client),
                    service_account = %Escaped(&a.identity)
                );
                a.service.serve(stream, peer_text).instrument(span).await;
            }
            Err(n) => {
                self.metrics
                    .refused(n.identity.as_deref().unwrap_or("unknown"), n.reason);
                let span = tracing::info_span!(
                    "identity",
                    service_account = %Escaped(n.identity.as_deref().unwrap_or("")),
                    refused = n.reason
                );
                self.fallback
                    .clone()
                    .refuse(stream, n.message)
                    .instrument(span)
                    .await;
            }
        }
    }

    async fn reject_busy(self: Arc<Self>, stream: ClientStream) {
        self.fallback.clone().reject_busy(stream).await;
    }
}

/// Admits Unix-socket clients whose uid is on a list (`allow_uids`), as the listener's own
/// identity; refuses everyone else (TCP clients too: put it on Unix listeners only).
pub struct UidAllowlist<S> {
    /// The listener's service.
    pub service: Arc<S>,
    /// The uids admitted.
    pub uids: Vec<u32>,
}

#[async_trait::async_trait]
impl<S: Send + Sync + 'static> Admission<S> for UidAllowlist<S> {
    async fn admit(&self, peer: &Peer) -> Result<Admitted<S>, NotAdmitted> {
        match peer {
            Peer::Unix { uid: Some(uid) } if self.uids.contains(uid) => Ok(Admitted {
                service: self.service.clone(),
                client: format!("uid {uid}"),
                identity: format!("uid:{uid}"),
            }),
            _ => Err(NotAdmitted {
                message: format!(
                    "entra-db-proxy: {peer} may not use this listener: its allow_uids ({}) does not list it; add the uid to the listener's allow_uids (--allow-uid)",
                    self.uids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                identity: None,
                reason: "uid",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use bytes::BytesMut;
    use dbproxy_cassandra::{PreparedStatements, SupportedOptions, Topology};
    use dbproxy_postgres::{ProtocolVersion, messages as pgmsg, startup::StartupMessage};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{
        cassandra::CassandraService,
        metrics::ListenerMetrics,
        postgres::PostgresService,
        testutil::{MemoryUpstream, ScriptedPasswords},
    };

    /// Refuses everyone (a pod outside the policy).
    struct Nobody;

    #[async_trait::async_trait]
    impl<S: Send + Sync + 'static> Admission<S> for Nobody {
        async fn admit(&self, _: &Peer) -> Result<Admitted<S>, NotAdmitted> {
            Err(NotAdmitted {
                message: "entra-db-proxy: pod shop/x may not use listener \"l\"".into(),
                identity: Some("shop/x".into()),
                reason: "policy",
            })
        }
    }

    async fn read_all(app: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), app.read_to_end(&mut out)).await;
        out
    }

    #[tokio::test]
    async fn a_refused_postgres_client_gets_28000_and_no_upstream() {
        let (upstream, _servers) = MemoryUpstream::new();
        let connects = upstream.connects.clone();
        let svc = Arc::new(PostgresService {
            name: "l".into(),
            upstream,
            user: "u".into(),
            default_database: None,
            credential: ScriptedPasswords::new(&["pw"]),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: None,
            metrics: ListenerMetrics::detached("l", "postgres"),
            local_tls: None,
            warm: Default::default(),
        });
        let gated = Arc::new(Gated {
            fallback: svc,
            admission: Arc::new(Nobody),
            metrics: IdentityMetrics::unregistered("l"),
        });
        let (mut app, proxy_side) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(gated.serve(ClientStream::Memory(proxy_side), "m".into()));
        let mut msg = StartupMessage::new(ProtocolVersion::V3_0);
        msg.set("user", "app");
        let mut buf = BytesMut::new();
        pgmsg::startup_message(&msg, &mut buf).unwrap();
        app.write_all(&buf).await.unwrap();
        let out = read_all(&mut app).await;
        task.await.unwrap();
        assert_eq!(out.first(), Some(&b'E'), "{out:?}");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("C28000"), "{text}");
        assert!(text.contains("may not use listener"), "{text}");
        assert_eq!(connects.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refused_cql_client_gets_bad_credentials_on_its_startup_stream() {
        let (upstream, _servers) = MemoryUpstream::new();
        let connects = upstream.connects.clone();
        let svc = Arc::new(CassandraService {
            name: "l".into(),
            upstream,
            username: "acct".into(),
            credential: ScriptedPasswords::new(&["pw"]),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: None,
            metrics: ListenerMetrics::detached("l", "cassandra"),
            max_version: 4,
            supported: SupportedOptions::default(),
            topology: Topology {
                listen: ([127, 0, 0, 1], 9042).into(),
                host_id: uuid::Uuid::nil(),
                data_center: None,
                rack: None,
            },
            prepared: PreparedStatements::new(),
            local_tls: None,
            schema: Default::default(),
            cosmos: None,
            max_frame_size: crate::cassandra::DEFAULT_MAX_FRAME_SIZE,
        });
        let gated = Arc::new(Gated {
            fallback: svc,
            admission: Arc::new(Nobody),
            metrics: IdentityMetrics::unregistered("l"),
        });
        let (mut app, proxy_side) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(gated.serve(ClientStream::Memory(proxy_side), "m".into()));
        let startup = dbproxy_cassandra::messages::startup_frame(4, 7, &[("CQL_VERSION", "3.0.0")])
            .to_bytes();
        app.write_all(&startup).await.unwrap();
        let out = read_all(&mut app).await;
        task.await.unwrap();
        // ERROR (opcode 0) on stream 7, code 0x0100 (bad credentials), the reason as message.
        assert!(out.len() > 13, "{out:?}");
        assert_eq!(i16::from_be_bytes([out[2], out[3]]), 7);
        assert_eq!(out[4], 0x00);
        assert_eq!(&out[9..13], &0x0100i32.to_be_bytes());
        assert!(String::from_utf8_lossy(&out).contains("may not use listener"));
        assert_eq!(connects.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn uid_allowlist() {
        let a = UidAllowlist {
            service: Arc::new(()),
            uids: vec![1000],
        };
        assert!(a.admit(&Peer::Unix { uid: Some(1000) }).await.is_ok());
        let e = a
            .admit(&Peer::Unix { uid: Some(1001) })
            .await
            .err()
            .unwrap();
        assert!(
            e.message.contains("uid 1001 may not use this listener"),
            "{}",
            e.message
        );
        assert!(a.admit(&Peer::Unix { uid: None }).await.is_err());
        assert!(
            a.admit(&Peer::Tcp(([127, 0, 0, 1], 1).into()))
                .await
                .is_err()
        );
    }
}
