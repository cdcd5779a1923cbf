//! Login flows against scripted upstream servers, including a small SCRAM-SHA-256 server.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::*;
use crate::messages::{ErrorFields, error_response};
use crate::sqlstate;
use crate::startup::{ProtocolVersion, StartupPacket, parse_startup_packet};

// ---- upstream messages -------------------------------------------------------------------

fn backend_message(tag: u8, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(tag);
    buf.put_u32((body.len() + 4) as u32);
    buf.put_slice(body);
    buf
}

fn auth(code: i32, data: &[u8]) -> BytesMut {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    backend_message(b'R', &body)
}

fn auth_ok() -> BytesMut {
    auth(0, &[])
}

fn sasl_mechanisms(names: &[&str]) -> BytesMut {
    let mut data = Vec::new();
    for n in names {
        data.extend_from_slice(n.as_bytes());
        data.push(0);
    }
    data.push(0);
    auth(10, &data)
}

fn error(code: &'static str, message: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    error_response(&ErrorFields::fatal(code, message), &mut buf);
    buf
}

fn notice(message: &str) -> BytesMut {
    let mut body = Vec::new();
    body.extend_from_slice(b"SNOTICE\0VNOTICE\0C00000\0M");
    body.extend_from_slice(message.as_bytes());
    body.extend_from_slice(b"\0\0");
    backend_message(b'N', &body)
}

fn negotiate_protocol_version(minor: i32, options: &[&str]) -> BytesMut {
    let mut body = minor.to_be_bytes().to_vec();
    body.extend_from_slice(&(options.len() as i32).to_be_bytes());
    for o in options {
        body.extend_from_slice(o.as_bytes());
        body.push(0);
    }
    backend_message(b'v', &body)
}

/// ParameterStatus, BackendKeyData, ReadyForQuery: what follows AuthenticationOk.
fn after_ok() -> BytesMut {
    let mut buf = backend_message(b'S', b"server_version\x0016.4\0");
    buf.unsplit(backend_message(b'S', b"client_encoding\0UTF8\0"));
    buf.unsplit(backend_message(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4]));
    buf.unsplit(backend_message(b'Z', b"I"));
    buf
}

fn concat(parts: &[&[u8]]) -> BytesMut {
    let mut buf = BytesMut::new();
    for p in parts {
        buf.put_slice(p);
    }
    buf
}

// ---- proxy messages ----------------------------------------------------------------------

/// Splits one frontend message ('p') into its body, checking the framing.
fn password_body(bytes: &[u8]) -> &[u8] {
    assert_eq!(bytes[0], b'p', "not a 'p' message");
    let len = i32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), len + 1, "exactly one message");
    &bytes[5..]
}

/// The mechanism and data of a SASLInitialResponse.
fn sasl_initial(bytes: &[u8]) -> (String, Vec<u8>) {
    let body = password_body(bytes);
    let end = body.iter().position(|b| *b == 0).unwrap();
    let mechanism = String::from_utf8(body[..end].to_vec()).unwrap();
    let len = i32::from_be_bytes(body[end + 1..end + 5].try_into().unwrap()) as usize;
    let data = body[end + 5..].to_vec();
    assert_eq!(data.len(), len);
    (mechanism, data)
}

fn startup(user: &str) -> StartupMessage {
    let mut msg = StartupMessage::new(ProtocolVersion::V3_0);
    msg.set("user", user);
    msg.set("database", "postgres");
    msg
}

fn send(step: LoginStep) -> BytesMut {
    match step {
        LoginStep::Send(bytes) => bytes,
        other => panic!("expected Send, got {other:?}"),
    }
}

fn authenticated(step: LoginStep) -> BytesMut {
    match step {
        LoginStep::Authenticated { to_client } => to_client,
        other => panic!("expected Authenticated, got {other:?}"),
    }
}

// ---- a test SCRAM-SHA-256 server (RFC 5802 / RFC 7677) -----------------------------------

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    let mut out = [0; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(&Sha256::digest(data));
    out
}

/// PBKDF2-HMAC-SHA-256 with one output block: SCRAM's Hi().
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    out
}

struct ScramServer {
    password: Vec<u8>,
    salt: Vec<u8>,
    iterations: u32,
    server_nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ScramServer {
    fn new(password: &[u8]) -> Self {
        ScramServer {
            password: password.to_vec(),
            salt: b"test-salt-123456".to_vec(),
            iterations: 4096,
            server_nonce: "3rfcNHYJY1ZVvWVs7j".to_string(),
            client_first_bare: String::new(),
            server_first: String::new(),
        }
    }

    /// Takes client-first-message, returns server-first-message.
    fn first(&mut self, client_first: &[u8]) -> String {
        let client_first = std::str::from_utf8(client_first).unwrap();
        let bare = client_first
            .strip_prefix("n,,")
            .expect("gs2 header must be n,, (no channel binding)");
        let client_nonce = bare.strip_prefix("n=,r=").unwrap();
        self.client_first_bare = bare.to_string();
        self.server_first = format!(
            "r={client_nonce}{},s={},i={}",
            self.server_nonce,
            B64.encode(&self.salt),
            self.iterations
        );
        self.server_first.clone()
    }

    /// Takes client-final-message; checks the proof and returns server-final-message.
    fn last(&self, client_final: &[u8]) -> String {
        let client_final = std::str::from_utf8(client_final).unwrap();
        let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
        assert!(without_proof.starts_with("c=biws,r="), "{without_proof}");
        let proof = B64.decode(proof).unwrap();

        let salted = hi(&self.password, &self.salt, self.iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let recovered_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        assert_eq!(sha256(&recovered_key), stored_key, "client proof is wrong");

        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        format!("v={}", B64.encode(server_signature))
    }
}

/// Runs SCRAM up to (not including) AuthenticationSASLFinal; returns the login and the
/// server-final message a correct server would send.
fn scram_until_final(token: &[u8], mechanisms: &[&str]) -> (UpstreamLogin, String) {
    let mut login = UpstreamLogin::new(startup("app@contoso.com"), token.to_vec());
    login.start();
    let mut server = ScramServer::new(token);

    let mut buf = sasl_mechanisms(mechanisms);
    let initial = send(login.receive(&mut buf).unwrap());
    assert!(buf.is_empty());
    let (mechanism, client_first) = sasl_initial(&initial);
    assert_eq!(mechanism, "SCRAM-SHA-256");

    let server_first = server.first(&client_first);
    let mut buf = auth(11, server_first.as_bytes());
    let response = send(login.receive(&mut buf).unwrap());
    let server_final = server.last(password_body(&response));
    (login, server_final)
}

// ---- tests -------------------------------------------------------------------------------

#[test]
fn start_sends_the_startup_message_once() {
    let msg = startup("app@contoso.com");
    let mut login = UpstreamLogin::new(msg.clone(), b"token".to_vec());
    let mut bytes = login.start();
    assert_eq!(
        parse_startup_packet(&mut bytes).unwrap(),
        Some(StartupPacket::Startup(msg))
    );
    assert!(bytes.is_empty());
    assert!(login.start().is_empty());
}

#[test]
fn start_keeps_protocol_3_2() {
    let mut msg = startup("u");
    msg.version = ProtocolVersion::V3_2;
    let mut login = UpstreamLogin::new(msg, b"t".to_vec());
    assert_eq!(&login.start()[4..8], &196_610u32.to_be_bytes());
}

fn cleartext_flow(token: &[u8]) {
    let mut login = UpstreamLogin::new(startup("app@contoso.com"), token.to_vec());
    login.start();
    let mut buf = BytesMut::new();
    assert!(matches!(
        login.receive(&mut buf).unwrap(),
        LoginStep::NeedMore
    ));

    buf.unsplit(auth(3, &[]));
    let out = send(login.receive(&mut buf).unwrap());
    assert!(buf.is_empty());
    let mut expected = BytesMut::new();
    postgres_protocol::message::frontend::password_message(token, &mut expected).unwrap();
    assert_eq!(out, expected);
    assert_eq!(&password_body(&out)[..token.len()], token);

    let mut buf = concat(&[&auth_ok(), &after_ok()]);
    let to_client = authenticated(login.receive(&mut buf).unwrap());
    assert_eq!(to_client, concat(&[&auth_ok(), &after_ok()]));
    assert!(buf.is_empty());
}

#[test]
fn cleartext_with_16k_token() {
    cleartext_flow("x".repeat(16 * 1024).as_bytes());
}

#[test]
fn cleartext_with_7000_char_token() {
    let token: String = (0..7000)
        .map(|i| {
            char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."[i % 65])
        })
        .collect();
    cleartext_flow(token.as_bytes());
}

#[test]
fn cleartext_fed_byte_by_byte() {
    let token = b"eyJ0eXAiOiJKV1QifQ.payload.sig";
    let mut login = UpstreamLogin::new(startup("u"), token.to_vec());
    login.start();
    let script = concat(&[&notice("hello"), &auth(3, &[])]);
    let mut buf = BytesMut::new();
    let mut sent = None;
    for (i, b) in script.iter().enumerate() {
        buf.put_u8(*b);
        match login.receive(&mut buf).unwrap() {
            LoginStep::NeedMore => assert!(i + 1 < script.len(), "NeedMore at the end"),
            LoginStep::Send(out) => {
                assert_eq!(i + 1, script.len(), "sent too early");
                sent = Some(out);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(&password_body(&sent.unwrap())[..token.len()], token);

    let script = concat(&[&auth_ok(), &after_ok()]);
    let mut buf = BytesMut::new();
    for (i, b) in script.iter().enumerate().take(8) {
        buf.put_u8(*b);
        assert!(
            matches!(login.receive(&mut buf).unwrap(), LoginStep::NeedMore),
            "{i}"
        );
    }
    buf.put_slice(&script[8..]);
    // The notice received before the password request comes first.
    assert_eq!(
        authenticated(login.receive(&mut buf).unwrap()),
        concat(&[&notice("hello"), &script])
    );
}

#[test]
fn bytes_after_ok_including_a_partial_message_go_to_the_client() {
    let mut login = UpstreamLogin::new(startup("u"), b"t".to_vec());
    login.start();
    let mut buf = auth(3, &[]);
    send(login.receive(&mut buf).unwrap());
    let rest = after_ok();
    let mut buf = concat(&[&auth_ok(), &rest[..rest.len() - 3]]);
    let to_client = authenticated(login.receive(&mut buf).unwrap());
    assert_eq!(to_client, concat(&[&auth_ok(), &rest[..rest.len() - 3]]));
    assert!(buf.is_empty());
}

#[test]
fn md5_known_vector() {
    // The vector from postgres-protocol's own test: user md5_user, password "password".
    let mut login = UpstreamLogin::new(startup("md5_user"), b"password".to_vec());
    login.start();
    let mut buf = auth(5, &[0x2a, 0x3d, 0x8f, 0xe0]);
    let out = send(login.receive(&mut buf).unwrap());
    assert_eq!(
        password_body(&out),
        b"md562af4dd09bbb41884907a838a3233294\0"
    );
    let mut buf = auth_ok();
    authenticated(login.receive(&mut buf).unwrap());
}

#[test]
fn md5_without_user_or_with_bad_salt() {
    let mut login = UpstreamLogin::new(StartupMessage::new(ProtocolVersion::V3_0), b"p".to_vec());
    let err = login.receive(&mut auth(5, &[1, 2, 3, 4])).unwrap_err();
    assert!(matches!(err, LoginError::Md5MissingUser), "{err}");

    let mut login = UpstreamLogin::new(startup("u"), b"p".to_vec());
    let err = login.receive(&mut auth(5, &[1, 2, 3])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent a malformed AuthenticationMD5Password message"
    );
}

#[test]
fn scram_end_to_end() {
    let token = b"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.scram-token.sig";
    let (mut login, server_final) = scram_until_final(token, &["SCRAM-SHA-256"]);
    // SASLFinal and AuthenticationOk arrive together, as PostgreSQL sends them.
    let mut buf = concat(&[&auth(12, server_final.as_bytes()), &auth_ok(), &after_ok()]);
    let to_client = authenticated(login.receive(&mut buf).unwrap());
    assert_eq!(to_client, concat(&[&auth_ok(), &after_ok()]));
}

#[test]
fn scram_without_channel_binding_even_if_plus_is_offered() {
    let token = b"token";
    // ScramServer::first asserts the "n,," gs2 header.
    let (mut login, server_final) =
        scram_until_final(token, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    let mut buf = auth(12, server_final.as_bytes());
    assert!(matches!(
        login.receive(&mut buf).unwrap(),
        LoginStep::NeedMore
    ));
    let mut buf = auth_ok();
    authenticated(login.receive(&mut buf).unwrap());
}

#[test]
fn scram_bad_server_signature() {
    let (mut login, _) = scram_until_final(b"token", &["SCRAM-SHA-256"]);
    let forged = format!("v={}", B64.encode([7u8; 32]));
    let mut buf = concat(&[&auth(12, forged.as_bytes()), &auth_ok()]);
    let err = login.receive(&mut buf).unwrap_err();
    assert!(
        matches!(err, LoginError::ScramServerSignature(_)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("upstream's SCRAM-SHA-256 server signature did not verify"),
        "{err}"
    );
    // The login is over.
    assert!(matches!(
        login.receive(&mut auth_ok()).unwrap_err(),
        LoginError::Finished
    ));
}

#[test]
fn scram_server_error_in_final() {
    let (mut login, _) = scram_until_final(b"token", &["SCRAM-SHA-256"]);
    let err = login
        .receive(&mut auth(12, b"e=invalid-proof"))
        .unwrap_err();
    assert!(
        matches!(err, LoginError::ScramServerSignature(_)),
        "{err:?}"
    );
}

#[test]
fn scram_ok_before_final_is_refused() {
    let (mut login, _) = scram_until_final(b"token", &["SCRAM-SHA-256"]);
    let err = login.receive(&mut auth_ok()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent unexpected AuthenticationOk while waiting for AuthenticationSASLFinal"
    );
}

#[test]
fn scram_nonce_mismatch() {
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    send(
        login
            .receive(&mut sasl_mechanisms(&["SCRAM-SHA-256"]))
            .unwrap(),
    );
    let err = login
        .receive(&mut auth(11, b"r=notmynonce,s=c2FsdA==,i=4096"))
        .unwrap_err();
    assert!(matches!(err, LoginError::Scram(_)), "{err:?}");
    assert!(err.to_string().contains("nonce"), "{err}");
}

#[test]
fn sasl_without_scram_sha_256() {
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let err = login
        .receive(&mut sasl_mechanisms(&["SCRAM-SHA-256-PLUS", "OAUTHBEARER"]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream offered no supported SASL mechanism (offered: SCRAM-SHA-256-PLUS, OAUTHBEARER; supported: SCRAM-SHA-256)"
    );
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let err = login
        .receive(&mut auth(10, b"SCRAM-SHA-256\0"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent a malformed AuthenticationSASL message"
    );
}

#[test]
fn unsupported_methods() {
    for (code, name) in [
        (2, "KerberosV5"),
        (7, "GSS"),
        (8, "GSSContinue"),
        (9, "SSPI"),
        (99, "unknown"),
    ] {
        let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
        let err = login.receive(&mut auth(code, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("upstream asked for unsupported authentication method {code} ({name})")
        );
    }
}

#[test]
fn second_password_request_is_refused() {
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    send(login.receive(&mut auth(3, &[])).unwrap());
    let err = login.receive(&mut auth(3, &[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent unexpected AuthenticationCleartextPassword while waiting for AuthenticationOk"
    );
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let err = login.receive(&mut auth(11, b"r=x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent unexpected AuthenticationSASLContinue while waiting for an authentication request"
    );
}

#[test]
fn error_before_auth_is_rejected_with_exact_bytes() {
    let mut login = UpstreamLogin::new(startup("nobody@contoso.com"), b"token".to_vec());
    login.start();
    let err = error(
        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
        "role \"nobody@contoso.com\" does not exist",
    );
    let mut buf = err.clone();
    match login.receive(&mut buf).unwrap() {
        LoginStep::Rejected {
            to_client,
            code,
            message,
        } => {
            assert_eq!(to_client, err);
            assert_eq!(code, "28000");
            assert_eq!(message, "role \"nobody@contoso.com\" does not exist");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        login.receive(&mut BytesMut::new()).unwrap_err(),
        LoginError::Finished
    ));
}

#[test]
fn error_after_password_is_rejected_with_28p01() {
    let mut login = UpstreamLogin::new(startup("u"), b"expired-token".to_vec());
    send(login.receive(&mut auth(3, &[])).unwrap());
    let err = error(
        sqlstate::INVALID_PASSWORD,
        "password authentication failed for user \"u\"",
    );
    let mut buf = err.clone();
    match login.receive(&mut buf).unwrap() {
        LoginStep::Rejected {
            to_client, code, ..
        } => {
            assert_eq!(to_client, err);
            assert_eq!(code, "28P01");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn negotiate_and_notices_keep_their_order() {
    let mut msg = startup("u");
    msg.version = ProtocolVersion { major: 3, minor: 9 };
    msg.set("_pq_.unknown", "1");
    let mut login = UpstreamLogin::new(msg, b"token".to_vec());
    login.start();

    let v = negotiate_protocol_version(2, &["_pq_.unknown"]);
    let n1 = notice("first");
    let n2 = notice("second");
    let mut buf = concat(&[&v, &n1, &auth(3, &[])]);
    send(login.receive(&mut buf).unwrap());
    let mut buf = concat(&[&n2, &auth_ok(), &after_ok()]);
    let to_client = authenticated(login.receive(&mut buf).unwrap());
    assert_eq!(to_client, concat(&[&v, &n1, &n2, &auth_ok(), &after_ok()]));
}

#[test]
fn notices_before_an_error_are_forwarded_first() {
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let n = notice("note");
    let e = error(
        sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    );
    let mut buf = concat(&[&n, &e]);
    match login.receive(&mut buf).unwrap() {
        LoginStep::Rejected {
            to_client,
            code,
            message,
        } => {
            assert_eq!(to_client, concat(&[&n, &e]));
            assert_eq!(code, "53300");
            assert_eq!(message, "sorry, too many clients already");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn negotiate_after_auth_request_or_twice_is_refused() {
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    send(login.receive(&mut auth(3, &[])).unwrap());
    let err = login
        .receive(&mut negotiate_protocol_version(0, &[]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent unexpected message type 'v' while waiting for AuthenticationOk"
    );

    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let v = negotiate_protocol_version(0, &[]);
    let err = login.receive(&mut concat(&[&v, &v])).unwrap_err();
    assert!(
        matches!(err, LoginError::UnexpectedMessage { tag: 'v', .. }),
        "{err:?}"
    );

    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let err = login
        .receive(&mut backend_message(b'v', &[0, 0, 0, 2]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent a malformed NegotiateProtocolVersion message"
    );
}

#[test]
fn unexpected_message_before_auth() {
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let err = login.receive(&mut backend_message(b'Z', b"I")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent unexpected message type 'Z' while waiting for an authentication request"
    );
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    // Not PostgreSQL at all (e.g. an HTTP server): "HTTP/1.1 400".
    let err = login
        .receive(&mut BytesMut::from(&b"HTTP/1.1 400"[..]))
        .unwrap_err();
    // 'H' then "TTP/" as a length: refused at the header.
    assert!(matches!(err, LoginError::MessageTooLong { .. }), "{err:?}");
}

#[test]
fn oversized_message_is_refused_at_the_header() {
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let mut buf = BytesMut::new();
    buf.put_u8(b'N');
    buf.put_u32((MAX_LOGIN_MESSAGE_LEN + 1) as u32);
    let err = login.receive(&mut buf).unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent a 1048577-byte message during login, more than the 1048576-byte limit"
    );

    // At the limit: wait for it (and reserve room), no error.
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let mut buf = BytesMut::new();
    buf.put_u8(b'N');
    buf.put_u32(MAX_LOGIN_MESSAGE_LEN as u32);
    assert!(matches!(
        login.receive(&mut buf).unwrap(),
        LoginStep::NeedMore
    ));
    assert!(buf.capacity() > MAX_LOGIN_MESSAGE_LEN);
}

#[test]
fn too_many_notices() {
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let big = notice(&"n".repeat(200_000));
    let mut result = Ok(LoginStep::NeedMore);
    for _ in 0..6 {
        result = login.receive(&mut big.clone());
        if result.is_err() {
            break;
        }
    }
    let err = result.unwrap_err();
    assert!(matches!(err, LoginError::TooManyNotices { .. }), "{err:?}");
}

#[test]
fn invalid_lengths() {
    for len in [0u32, 3, 0xffff_ffff] {
        let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
        let mut buf = BytesMut::new();
        buf.put_u8(b'R');
        buf.put_u32(len);
        let err = login.receive(&mut buf).unwrap_err();
        assert!(matches!(err, LoginError::InvalidLength(_)), "{err:?}");
    }
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let err = login
        .receive(&mut backend_message(b'R', &[0, 0]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent a malformed Authentication message"
    );
    // An empty 'R' must not borrow its code from the next message.
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let err = login
        .receive(&mut concat(&[&backend_message(b'R', &[]), &auth(3, &[])]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent a malformed Authentication message"
    );
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let err = login.receive(&mut auth(0, &[0])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sent a malformed AuthenticationOk message"
    );
}

#[test]
fn trust_auth_ok_without_password() {
    let mut login = UpstreamLogin::new(startup("u"), b"token".to_vec());
    let mut buf = concat(&[&auth_ok(), &after_ok()]);
    assert_eq!(
        authenticated(login.receive(&mut buf).unwrap()),
        concat(&[&auth_ok(), &after_ok()])
    );
}

#[test]
fn invalid_startup_fails_without_waiting() {
    let mut msg = startup("u");
    msg.set("application_name", "a\0b");
    let mut login = UpstreamLogin::new(msg, b"token".to_vec());
    assert!(login.start().is_empty());
    let err = login.receive(&mut BytesMut::new()).unwrap_err();
    assert!(matches!(err, LoginError::InvalidStartup(_)), "{err:?}");
    assert!(err.to_string().contains("application_name"), "{err}");
}

#[test]
fn password_with_nul_is_refused_for_cleartext() {
    let mut login = UpstreamLogin::new(startup("u"), b"sec\0ret".to_vec());
    let err = login.receive(&mut auth(3, &[])).unwrap_err();
    assert!(matches!(err, LoginError::PasswordContainsNul));
}

#[test]
fn password_never_in_debug_or_errors() {
    const TOKEN: &str = "SUPERSECRETTOKENVALUE";
    let mut login = UpstreamLogin::new(startup("u"), TOKEN.as_bytes().to_vec());
    let dbg = format!("{login:?} {login:#?}");
    assert!(!dbg.contains(TOKEN), "{dbg}");
    assert!(dbg.contains("redacted"), "{dbg}");

    let step = login.receive(&mut auth(3, &[])).unwrap();
    let dbg = format!("{step:?} {login:?}");
    assert!(!dbg.contains(TOKEN), "{dbg}");

    // Every error path that a malicious server can trigger after the password was sent.
    let mut login = UpstreamLogin::new(startup("u"), TOKEN.as_bytes().to_vec());
    login.start();
    let err = login.receive(&mut auth(7, &[])).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(TOKEN));
    let (mut login, _) = scram_until_final(TOKEN.as_bytes(), &["SCRAM-SHA-256"]);
    let err = login.receive(&mut auth(12, b"v=AAAA")).unwrap_err();
    assert!(!format!("{err} {err:?} {login:?}").contains(TOKEN));
}
