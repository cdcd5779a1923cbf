//! A raw PostgreSQL client: sends a StartupMessage (no TLS) and reads every message up to
//! ReadyForQuery or an ErrorResponse, so that tests can compare what the proxy sent.

use std::{net::SocketAddr, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend message: tag and body.
pub type Message = (char, Vec<u8>);

/// Connects, sends `params` in a protocol 3.0 StartupMessage, returns the messages up to and
/// including ReadyForQuery or ErrorResponse, and the open stream.
pub async fn start(
    addr: SocketAddr,
    params: &[(&str, &str)],
) -> (Vec<Message>, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet(params)).await.unwrap();
    let mut out = Vec::new();
    loop {
        let (tag, body) = read_message(&mut s).await;
        out.push((tag, body));
        if tag == 'Z' || tag == 'E' {
            return (out, s);
        }
    }
}

/// Sends a simple Query and returns the messages up to and including ReadyForQuery.
pub async fn query(s: &mut tokio::net::TcpStream, sql: &str) -> Vec<Message> {
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    s.write_all(&q).await.unwrap();
    let mut out = Vec::new();
    loop {
        let (tag, body) = read_message(s).await;
        out.push((tag, body));
        if tag == 'Z' {
            return out;
        }
    }
}

/// A ParameterStatus body as "name=value".
pub fn status(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut parts = text.split('\0');
    format!(
        "{}={}",
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("")
    )
}

/// The messages as comparable text: ParameterStatus as name=value, BackendKeyData by length
/// only (its key differs per backend), ErrorResponse by its S, C and M fields, others as is.
pub fn describe(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|(tag, body)| match tag {
            'S' => format!("S {}", status(body)),
            'K' => format!("K <{} bytes>", body.len()),
            'E' | 'N' => {
                let fields: Vec<String> = body
                    .split(|b| *b == 0)
                    .filter(|f| matches!(f.first(), Some(b'S' | b'C' | b'M')))
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                format!("{tag} {}", fields.join(" "))
            }
            _ => format!("{tag} {body:?}"),
        })
        .collect()
}

/// What the server itself sends a client that logs in directly (TLS, the Entra user, `token`
/// as the password) with `params` (`user` replaced): the messages from AuthenticationOk on.
/// The cold path relays exactly these, so they are what a warm client must see.
pub async fn direct(s: &crate::stack::Stack, token: &str, params: &[(&str, &str)]) -> Vec<Message> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&s.ca_file).unwrap();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.pg.port()))
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S');
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let params: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| {
            if *n == "user" {
                (*n, crate::stack::ENTRA_USER)
            } else {
                (*n, *v)
            }
        })
        .collect();
    tls.write_all(&startup_packet(&params)).await.unwrap();
    let mut out = Vec::new();
    loop {
        let (tag, body) = read_message(&mut tls).await;
        if tag == 'R' && body.get(..4) == Some(&[0, 0, 0, 3]) {
            let mut p = vec![b'p'];
            p.extend_from_slice(&((token.len() + 5) as u32).to_be_bytes());
            p.extend_from_slice(token.as_bytes());
            p.push(0);
            tls.write_all(&p).await.unwrap();
            continue;
        }
        out.push((tag, body));
        if tag == 'Z' || tag == 'E' {
            return out;
        }
    }
}

fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (n, v) in params {
        body.extend_from_slice(n.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

async fn read_message<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Message {
    let mut head = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut head))
        .await
        .expect("an answer")
        .unwrap();
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (head[0] as char, body)
}
