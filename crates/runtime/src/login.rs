//! Running a sans-IO login machine against an upstream stream.
//!
//! The protocol crates decide every byte of a login ([`dbproxy_postgres::login::UpstreamLogin`],
//! [`dbproxy_cassandra::UpstreamLogin`]) without touching a socket: `start` gives the first
//! bytes to send; `receive` looks at what has arrived and says "read more", "send this", or
//! "done". [`drive`] is the one loop that does the reading and writing for both.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a login machine wants next.
pub enum Progress<D> {
    /// No whole message yet: read more bytes.
    NeedMore,
    /// Write these bytes upstream, then go on.
    Send(BytesMut),
    /// The login is over (accepted or refused).
    Done(D),
}

/// A sans-IO login state machine.
pub trait LoginMachine {
    /// How a login ends: accepted, or refused with the upstream's error.
    type Done;
    /// The upstream broke the protocol.
    type Error: std::fmt::Display;

    /// The first bytes to send.
    fn start(&mut self) -> BytesMut;

    /// Consumes whole messages from `buf`.
    fn receive(&mut self, buf: &mut BytesMut) -> Result<Progress<Self::Done>, Self::Error>;
}

/// Implements [`LoginMachine`] for a protocol crate's `UpstreamLogin`, whose `receive` returns
/// its own `LoginStep` with `NeedMore` and `Send(BytesMut)` variants: the login is done at any
/// other step, which [`drive`] returns as it is.
macro_rules! login_machine {
    ($machine:ty, $step:ident, $error:ty) => {
        impl $crate::login::LoginMachine for $machine {
            type Done = $step;
            type Error = $error;

            fn start(&mut self) -> bytes::BytesMut {
                <$machine>::start(self)
            }

            fn receive(
                &mut self,
                buf: &mut bytes::BytesMut,
            ) -> Result<$crate::login::Progress<$step>, $error> {
                Ok(match <$machine>::receive(self, buf)? {
                    $step::NeedMore => $crate::login::Progress::NeedMore,
                    $step::Send(bytes) => $crate::login::Progress::Send(bytes),
                    done => $crate::login::Progress::Done(done),
                })
            }
        }
    };
}
pub(crate) use login_machine;

/// [`drive`] returned a step that is not an end (a bug in a [`LoginMachine`]).
pub fn unfinished_login() -> crate::session::SessionError {
    crate::session::SessionError::silent(
        crate::session::CloseReason::Internal,
        "the login machine stopped before the login was over",
    )
}

/// Why [`drive`] could not finish a login.
#[derive(Debug, thiserror::Error)]
pub enum DriveError<E: std::fmt::Display> {
    /// The upstream failed or closed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The upstream broke the protocol.
    #[error("{0}")]
    Protocol(E),
}

/// Runs `machine` over `upstream` until it is done. Bytes that arrive after the login's last
/// message stay in `buf` for the relay.
pub async fn drive<M, S>(
    machine: &mut M,
    upstream: &mut S,
    buf: &mut BytesMut,
) -> Result<M::Done, DriveError<M::Error>>
where
    M: LoginMachine,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let first = machine.start();
    upstream.write_all(&first).await.map_err(DriveError::Io)?;
    loop {
        match machine.receive(buf).map_err(DriveError::Protocol)? {
            Progress::NeedMore => {
                if upstream.read_buf(buf).await.map_err(DriveError::Io)? == 0 {
                    return Err(DriveError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    )));
                }
            }
            Progress::Send(bytes) => upstream.write_all(&bytes).await.map_err(DriveError::Io)?,
            Progress::Done(done) => return Ok(done),
        }
    }
}
