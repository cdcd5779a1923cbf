//! PostgreSQL: the proxy's login to the upstream server (`UpstreamLogin`), fed server
//! messages in arbitrary chunks after `start()`.
//!
//! Invariants: no panic; `Authenticated` leaves the buffer empty; once the login ended,
//! `receive` answers `Finished`.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::BytesMut;
use dbproxy_postgres::{LoginError, LoginStep, ProtocolVersion, StartupMessage, UpstreamLogin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (seed, chunks) = common::chunks(data);
    let mut startup = StartupMessage::new(if seed & 0x80 != 0 {
        ProtocolVersion::V3_2
    } else {
        ProtocolVersion::V3_0
    });
    startup.set("user", "aad_app@example.onmicrosoft.com");
    startup.set("database", "postgres");
    let mut login = UpstreamLogin::new(startup, b"eyJ0eXAiOiJKV1QifQ.token".to_vec());
    assert!(!login.start().is_empty());
    assert!(login.start().is_empty());

    let mut buf = BytesMut::new();
    let mut chunks = chunks.into_iter();
    let mut ended = false;
    'outer: loop {
        match login.receive(&mut buf) {
            Ok(LoginStep::NeedMore) => match chunks.next() {
                Some(c) => buf.extend_from_slice(c),
                None => break,
            },
            Ok(LoginStep::Send(_)) => {}
            Ok(LoginStep::Authenticated { .. }) => {
                assert!(buf.is_empty(), "Authenticated left bytes in the buffer");
                ended = true;
                break 'outer;
            }
            Ok(LoginStep::Rejected { .. }) | Err(_) => {
                ended = true;
                break 'outer;
            }
        }
    }
    if ended {
        assert!(matches!(login.receive(&mut buf), Err(LoginError::Finished)));
    }
});
