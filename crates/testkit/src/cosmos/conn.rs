//! One client connection of the Cosmos stand-in: the v4 handshake and login answered here,
//! then frames relayed to and from Cassandra, throttled and charged.

use std::sync::{Arc, atomic::Ordering};

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::Mutex,
};

use super::{CosmosConfig, Stats, charge_for, request_rate_message, wire};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const AUTHENTICATOR: &str = "org.apache.cassandra.auth.PasswordAuthenticator";

async fn send<W: AsyncWrite + Unpin>(w: &mut W, f: &wire::RawFrame) -> std::io::Result<()> {
    w.write_all(&f.encode()).await?;
    w.flush().await
}

/// Serves one client until either side closes.
pub(crate) async fn serve<S>(mut client: S, config: Arc<CosmosConfig>, stats: Arc<Stats>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(upstream) = handshake(&mut client, &config, &stats).await else {
        let _ = client.shutdown().await;
        return;
    };
    relay(client, upstream, stats).await;
}

/// Until the login: OPTIONS, STARTUP, AUTH_RESPONSE; then the upstream login.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send>(
    client: &mut S,
    config: &CosmosConfig,
    stats: &Stats,
) -> Option<Box<dyn Io>> {
    let mut started = false;
    loop {
        let f = wire::read_frame(client).await.ok()??;
        let v = f.version();
        if v != 4 {
            let message = format!(
                "Invalid or unsupported protocol version ({v}); supported versions are (4/v4)"
            );
            let reply = wire::error(v.clamp(3, 4), f.stream, wire::PROTOCOL_ERROR, &message);
            send(client, &reply).await.ok()?;
            continue;
        }
        match f.opcode {
            wire::OPTIONS => {
                let reply = wire::supported(
                    4,
                    f.stream,
                    &[("CQL_VERSION", &["3.11.0"]), ("COMPRESSION", &[])],
                );
                send(client, &reply).await.ok()?;
            }
            wire::STARTUP => {
                let options = wire::string_map(&f.body).unwrap_or_default();
                let reply = if options
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("COMPRESSION"))
                {
                    wire::error(
                        4,
                        f.stream,
                        wire::PROTOCOL_ERROR,
                        "Cql request had unsupported headers Compression",
                    )
                } else {
                    started = true;
                    wire::authenticate(4, f.stream, AUTHENTICATOR)
                };
                send(client, &reply).await.ok()?;
            }
            wire::AUTH_RESPONSE if started => {
                let (user, password) = wire::sasl_plain(&f.body).unwrap_or_default();
                if let Err(message) = (config.login)(&user, &password) {
                    stats
                        .refused_logins
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(message.clone());
                    let reply = wire::error(4, f.stream, wire::BAD_CREDENTIALS, &message);
                    send(client, &reply).await.ok()?;
                    continue;
                }
                match upstream_login(config).await {
                    Ok(up) => {
                        stats.logins.fetch_add(1, Ordering::SeqCst);
                        send(client, &wire::auth_success(4, f.stream)).await.ok()?;
                        return Some(up);
                    }
                    Err(message) => {
                        let reply = wire::error(4, f.stream, 0x0000, &message);
                        send(client, &reply).await.ok()?;
                        return None;
                    }
                }
            }
            op => {
                let reply = wire::error(
                    4,
                    f.stream,
                    wire::PROTOCOL_ERROR,
                    &format!("Unexpected message {op:#04x}, expecting STARTUP or AUTH_RESPONSE"),
                );
                send(client, &reply).await.ok()?;
            }
        }
    }
}

/// Logs in to the real Cassandra with the account role's password.
async fn upstream_login(config: &CosmosConfig) -> Result<Box<dyn Io>, String> {
    let tcp = TcpStream::connect(config.upstream)
        .await
        .map_err(|e| format!("stand-in: cannot reach Cassandra: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut up: Box<dyn Io> = match &config.upstream_tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = ServerName::from(config.upstream.ip());
            Box::new(
                tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("stand-in: TLS to Cassandra: {e}"))?,
            )
        }
    };
    let io = |e: std::io::Error| format!("stand-in: Cassandra: {e}");
    send(&mut up, &wire::startup()).await.map_err(io)?;
    let f = wire::read_frame(&mut up)
        .await
        .map_err(io)?
        .ok_or("stand-in: Cassandra closed")?;
    if f.opcode == wire::AUTHENTICATE {
        let (user, password) = &config.upstream_login;
        send(&mut up, &wire::auth_response(user, password))
            .await
            .map_err(io)?;
        let f = wire::read_frame(&mut up)
            .await
            .map_err(io)?
            .ok_or("stand-in: Cassandra closed")?;
        if f.opcode != wire::AUTH_SUCCESS {
            let (_, m) = wire::parse_error(&f.body).unwrap_or_default();
            return Err(format!("stand-in: Cassandra refused the role's login: {m}"));
        }
    } else if f.opcode != wire::READY {
        return Err(format!("stand-in: Cassandra answered opcode {}", f.opcode));
    }
    Ok(up)
}

/// After the login: requests throttled or forwarded, RESULTs charged.
async fn relay<S>(client: S, upstream: Box<dyn Io>, stats: Arc<Stats>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut cr, cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let cw = Arc::new(Mutex::new(cw));
    let to_upstream = {
        let (cw, stats) = (cw.clone(), stats.clone());
        async move {
            while let Ok(Some(f)) = wire::read_frame(&mut cr).await {
                if f.version() != 4 {
                    let message = format!(
                        "Invalid message version. Got {} but previous messages on this connection had version 4",
                        f.version()
                    );
                    let reply = wire::error(4, f.stream, wire::PROTOCOL_ERROR, &message);
                    let _ = send(&mut *cw.lock().await, &reply).await;
                    break;
                }
                let throttled = matches!(f.opcode, wire::QUERY | wire::EXECUTE | wire::BATCH)
                    && stats.throttle_next();
                if throttled {
                    let ms = stats.retry_after_ms.load(Ordering::SeqCst);
                    let reply =
                        wire::error(4, f.stream, wire::OVERLOADED, &request_rate_message(ms));
                    if send(&mut *cw.lock().await, &reply).await.is_err() {
                        break;
                    }
                } else if send(&mut uw, &f).await.is_err() {
                    break;
                }
            }
            let _ = uw.shutdown().await;
        }
    };
    let to_client = async move {
        while let Ok(Some(f)) = wire::read_frame(&mut ur).await {
            let f = if f.opcode == wire::RESULT && f.stream >= 0 {
                let charge = charge_for(f.body.len());
                match wire::with_request_charge(&f, charge) {
                    Some(charged) => {
                        stats.charge(charge);
                        charged
                    }
                    None => f,
                }
            } else {
                f
            };
            if send(&mut *cw.lock().await, &f).await.is_err() {
                break;
            }
        }
        let _ = cw.lock().await.shutdown().await;
    };
    tokio::select! {
        _ = to_upstream => {},
        _ = to_client => {},
    }
}
