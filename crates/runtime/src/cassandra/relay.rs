//! Step 5 of a CQL session: frames both ways, rewritten only where the topology shows.
//!
//! Two loops run side by side, one per direction. Each decodes whole frames from what it has
//! read (the frame header alone, unless the frame concerns the topology), hands them to the
//! session's [`TopologyRewriter`], and writes what it says to forward. Frames the proxy
//! answers itself (a `system.peers` query, an ERROR for garbage) go through a small channel to
//! the upstream→client loop, the only writer of the client socket. A RESULT of kind
//! SCHEMA_CHANGE is held until the upstream agrees on the schema ([`super::schema`]) by a task
//! of its own, which then sends it through the same channel; the other streams' answers are not
//! held behind it. When the client ends its side, the upstream's is shut down too, and the
//! answers still in flight are relayed (a client that half-closed reads them) until the
//! upstream closes, for at most a couple of seconds.
//!
//! Memory is bounded by the listener's `max_frame_size`, not by what the wire announces:
//! sockets are read 64 KiB at a time, a client frame over the cap is skipped as it arrives and
//! refused with Cassandra's ERROR 0x2200 on its stream (the session goes on), a compressed body
//! announcing more than the cap is refused before it is decompressed (0x000A, closing), and an
//! upstream frame over the cap closes the session with a warning. In v3/v4 framing a frame
//! longer than one read that the rewriting does not need whole (a big INSERT, a page of rows:
//! see `dbproxy_cassandra::topology`'s `request_needs_whole`) is relayed as its bytes arrive,
//! so such a session holds about one read per direction, not one frame; the proxy's own
//! answers to the client wait for the end of such a frame. v5 frames are always held whole
//! (up to the cap), each segment's CRC being checked and re-computed.
//!
//! On a Cosmos DB listener ([`super::Cosmos`]) each QUERY / EXECUTE / BATCH relayed whole is
//! also kept (a copy, within a per-connection cap) until its response; a response that is
//! Cosmos's request-rate Overloaded is not relayed but the request is resent, on the same
//! stream, once its wait has passed (a timer of the client→upstream loop, so other streams go
//! on meanwhile), until [`dbproxy_cassandra::cosmos::RetryTracker`]'s budget is spent. The
//! request charge of every response is added to the listener's request-unit counter, read from
//! the frame in place.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use dbproxy_cassandra::{
    BodyCompression, ClientAction, CqlError, Frame, FrameDecoder, FrameEncoder, FrameHeader,
    Framing, HEADER_LEN, Piece, TopologyRewriter, UpstreamAction, codes,
    cosmos::{RetryDecision, RetryTracker, request_charge},
    error_frame,
    schema::is_schema_change,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    CassandraService,
    handshake::{addressee, read_some},
};
use crate::{escape::Escaped, relay::Transferred, session::CloseReason, upstream::Connector};

/// Frames longer than this (header included) are relayed as they arrive when the topology
/// rewriting does not need them whole: about one socket read.
const PASS_MIN: usize = 64 * 1024;

/// Bytes read from one side but not yet decoded, and the decoder that splits them.
pub(crate) struct Inbound {
    /// Undecoded bytes.
    pub buf: BytesMut,
    /// The side's decoder, in the connection's framing.
    pub decoder: FrameDecoder,
}

/// The codecs of a logged-in session.
pub(crate) struct Codecs {
    /// What the client sends.
    pub from_client: Inbound,
    /// How frames are written to the client.
    pub to_client: FrameEncoder,
    /// What the upstream sends.
    pub from_upstream: Inbound,
    /// How frames are written upstream.
    pub to_upstream: FrameEncoder,
}

/// The relay of one session after READY.
pub(crate) struct Relay<C> {
    service: Arc<CassandraService<C>>,
    rewriter: Mutex<TopologyRewriter>,
    compression: BodyCompression,
    /// The version the session speaks; frames of another are refused, as Cassandra does.
    version: u8,
    started: Instant,
    last_activity_ms: AtomicU64,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    /// Cosmos DB listeners with retries on: the requests kept for retry.
    retry: Option<Mutex<RetryTracker>>,
}

impl<C: Connector> Relay<C> {
    /// A relay for `service`'s session with the negotiated body `compression`.
    pub(crate) fn new(
        service: Arc<CassandraService<C>>,
        version: u8,
        compression: BodyCompression,
    ) -> Self {
        Relay {
            rewriter: Mutex::new(
                TopologyRewriter::with_prepared(service.topology.clone(), service.prepared.clone())
                    .with_max_body_len(service.max_body_len()),
            ),
            retry: service
                .cosmos
                .as_ref()
                .and_then(|c| c.retry)
                .map(|p| Mutex::new(RetryTracker::new(p))),
            service,
            compression,
            version,
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            to_upstream: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        }
    }

    /// Bytes moved so far.
    pub(crate) fn transferred(&self) -> Transferred {
        Transferred {
            to_upstream: self.to_upstream.load(Ordering::Relaxed),
            to_client: self.to_client.load(Ordering::Relaxed),
        }
    }

    /// A request relayed whole: kept for retry when that is on.
    fn keep_for_retry(&self, frame: &Frame) {
        if let Some(Ok(mut t)) = self.retry.as_ref().map(|t| t.lock()) {
            t.on_request(frame);
        }
    }

    /// A request or response on `stream` relayed as it arrives: nothing kept for it.
    fn forget_retry(&self, stream: i16) {
        if let Some(Ok(mut t)) = self.retry.as_ref().map(|t| t.lock()) {
            t.forget(stream);
        }
    }

    /// A response's request charge, on a Cosmos listener.
    fn count_charge(&self, header: &FrameHeader, body_prefix: &[u8]) {
        if let Some(c) = &self.service.cosmos
            && let Some(charge) = request_charge(header, body_prefix)
        {
            c.metrics.request_units.inc_by(charge);
        }
    }

    /// A whole response: `Some(frame to resend, when)` if it is a rate limit to retry.
    fn retry_decision(&self, frame: &Frame, max_body: usize) -> Option<(Instant, Frame)> {
        let mut t = self.retry.as_ref()?.lock().ok()?;
        let c = self.service.cosmos.as_ref()?;
        match t.on_response(frame, self.compression, max_body) {
            RetryDecision::Relay => None,
            RetryDecision::GiveUp => {
                c.metrics.throttled.inc();
                c.metrics.given_up.inc();
                tracing::debug!(
                    stream = frame.header.stream,
                    "Cosmos DB throttled a request beyond the retry budget; relaying its error"
                );
                None
            }
            RetryDecision::Retry { after, frame } => {
                c.metrics.throttled.inc();
                c.metrics.retried.inc();
                c.metrics.wait_seconds.inc_by(after.as_secs_f64());
                tracing::debug!(
                    stream = frame.header.stream,
                    wait_ms = after.as_millis() as u64,
                    "Cosmos DB throttled a request; resending it after its wait"
                );
                Some((Instant::now() + after, frame))
            }
        }
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Runs both directions until one ends; returns why.
    pub(crate) async fn run<L, U>(
        &self,
        client: &mut L,
        upstream: &mut U,
        codecs: Codecs,
    ) -> CloseReason
    where
        L: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let Codecs {
            from_client,
            to_client,
            from_upstream,
            to_upstream,
        } = codecs;
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        // Frames the proxy itself answers go to the client writer: local replies, and the ERROR
        // for garbage from the client, after which the session closes. Small: the client side
        // waits for the writer rather than queueing replies without bound.
        let (reply_tx, mut reply_rx) = tokio::sync::mpsc::channel::<(Frame, bool)>(4);
        let metrics = &self.service.metrics;
        let max_body = self.service.max_body_len();
        // Throttled requests to resend, and when: from the upstream→client loop to the
        // client→upstream loop, the upstream's writer. One at most per kept request.
        let (retry_tx, mut retry_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Frame)>();

        let client_to_upstream = async {
            let Inbound {
                mut buf,
                decoder: mut dec,
            } = from_client;
            let mut enc = to_upstream;
            let mut out = BytesMut::new();
            // Throttled requests waiting for their time, soonest first.
            let mut waiting: Vec<(Instant, Frame)> = Vec::new();
            dec.pass_large_frames(Some(PASS_MIN));
            loop {
                let mut passed = None;
                let piece = dec.next_piece(&mut buf, |h, prefix| {
                    let whole = h.version != self.version
                        || self
                            .rewriter
                            .lock()
                            .map_or(true, |mut r| r.request_needs_whole(h, prefix));
                    if !whole {
                        passed = Some(h.stream);
                    }
                    whole
                });
                if let Some(stream) = passed {
                    self.forget_retry(stream);
                }
                match piece {
                    Ok(Some(Piece::Raw(bytes))) => {
                        out.extend_from_slice(&bytes);
                        continue;
                    }
                    Ok(Some(Piece::Frame(frame))) if frame.header.version != self.version => {
                        let message = format!(
                            "Invalid message version. Got {} but previous messages on this connection had version {}",
                            frame.header.version, self.version
                        );
                        tracing::warn!(error = %message, "garbage from the client; answering with an ERROR and closing");
                        let error = error_frame(
                            self.version,
                            frame.header.stream,
                            codes::PROTOCOL_ERROR,
                            &message,
                        );
                        let _ = reply_tx.send((error, true)).await;
                        return CloseReason::ClientProtocol;
                    }
                    Ok(Some(Piece::Frame(frame))) => {
                        let action = match self.rewriter.lock() {
                            Ok(mut r) => r.on_client_frame(&frame, self.compression),
                            Err(_) => return CloseReason::Internal,
                        };
                        match action {
                            Ok(ClientAction::Forward) => {
                                self.keep_for_retry(&frame);
                                enc.encode(&frame, &mut out)
                            }
                            Ok(ClientAction::Reply(reply)) => {
                                if reply_tx.send((reply, false)).await.is_err() {
                                    return CloseReason::ClientClosed;
                                }
                            }
                            Err(e) => {
                                let error =
                                    e.to_error_frame(frame.header.version, frame.header.stream);
                                let _ = reply_tx.send((error, true)).await;
                                return CloseReason::ClientProtocol;
                            }
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) if !e.is_fatal() => {
                        // An oversized request, skipped without being buffered: refused on
                        // its stream as Cassandra refuses it; the session goes on.
                        let (_, stream) = addressee_of(&e, &buf, dec.framing());
                        tracing::info!(error = %e, stream, "refused a request over the listener's max_frame_size");
                        if reply_tx
                            .send((e.to_error_frame(self.version, stream), false))
                            .await
                            .is_err()
                        {
                            return CloseReason::ClientClosed;
                        }
                        continue;
                    }
                    Err(e) => {
                        let (version, stream) = addressee_of(&e, &buf, dec.framing());
                        tracing::warn!(error = %Escaped(&e.to_string()), "garbage from the client; answering with an ERROR and closing");
                        let _ = reply_tx
                            .send((e.to_error_frame(version, stream), true))
                            .await;
                        return CloseReason::ClientProtocol;
                    }
                }
                if !out.is_empty() {
                    if uw.write_all(&out).await.is_err() {
                        return CloseReason::UpstreamClosed;
                    }
                    out.clear();
                }
                // In the middle of a frame relayed as it arrives, no resent request may be
                // written upstream: they wait for its end.
                let passing = dec.is_passing();
                let next_retry = waiting.first().map(|(at, _)| *at);
                tokio::select! {
                    r = read_some(&mut cr, &mut buf) => match r {
                        Ok(0) | Err(_) => {
                            let _ = uw.shutdown().await;
                            return CloseReason::ClientClosed;
                        }
                        Ok(n) => {
                            self.to_upstream.fetch_add(n as u64, Ordering::Relaxed);
                            metrics.bytes_to_upstream.inc_by(n as u64);
                            self.touch();
                        }
                    },
                    Some(retry) = retry_rx.recv() => {
                        let at = waiting.partition_point(|(t, _)| *t <= retry.0);
                        waiting.insert(at, retry);
                    }
                    _ = sleep_until_some(next_retry), if !passing => {
                        let now = Instant::now();
                        let due = waiting.partition_point(|(t, _)| *t <= now);
                        for (_, frame) in waiting.drain(..due) {
                            enc.encode(&frame, &mut out);
                        }
                    }
                }
            }
        };

        let upstream_to_client = async {
            let Inbound {
                mut buf,
                decoder: mut dec,
            } = from_upstream;
            let mut enc = to_client;
            let mut out = BytesMut::new();
            // Once writing to the client failed, the upstream's answers are still read (their
            // charges counted) until the session ends, but dropped.
            let mut client_gone = false;
            dec.pass_large_frames(Some(PASS_MIN));
            loop {
                let mut passed = None;
                let piece = dec.next_piece(&mut buf, |h, prefix| {
                    let whole = self
                        .rewriter
                        .lock()
                        .map_or(true, |r| r.response_needs_whole(h, prefix));
                    if !whole {
                        // Relayed unread: its charge is read from its first bytes.
                        self.count_charge(h, prefix);
                        passed = Some(h.stream);
                    }
                    whole
                });
                if let Some(stream) = passed {
                    self.forget_retry(stream);
                }
                match piece {
                    Ok(Some(Piece::Raw(bytes))) => {
                        out.extend_from_slice(&bytes);
                        continue;
                    }
                    Ok(Some(Piece::Frame(frame))) => {
                        self.count_charge(&frame.header, &frame.body);
                        if let Some(retry) = self.retry_decision(&frame, max_body) {
                            // Not relayed: the request goes again after its wait.
                            if retry_tx.send(retry).is_err() {
                                return CloseReason::ClientClosed;
                            }
                            continue;
                        }
                        let action = match self.rewriter.lock() {
                            Ok(mut r) => r.on_upstream_frame(frame, self.compression),
                            Err(_) => return CloseReason::Internal,
                        };
                        match action {
                            Ok(UpstreamAction::Forward(f)) => {
                                if is_schema_change(&f, self.compression, max_body) {
                                    // The driver cannot see the peers to wait for agreement:
                                    // this RESULT waits for it, the other streams go on.
                                    let (service, held) = (self.service.clone(), reply_tx.clone());
                                    tokio::spawn(async move {
                                        service.wait_schema_agreement().await;
                                        let _ = held.send((f, false)).await;
                                    });
                                } else {
                                    enc.encode(&f, &mut out)
                                }
                            }
                            Ok(UpstreamAction::Drop) => {}
                            Err(e) => {
                                tracing::warn!(error = %Escaped(&e.to_string()), "unreadable topology answer from the upstream; closing rather than exposing it");
                                return CloseReason::UpstreamProtocol;
                            }
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(CqlError::FrameTooLarge {
                        len, max, stream, ..
                    }) => {
                        tracing::warn!(
                            len,
                            max_frame_size = max + HEADER_LEN,
                            stream,
                            "a frame from the upstream exceeds the listener's max_frame_size; closing the session (raise max_frame_size / --cassandra-max-frame-size if such results are expected)"
                        );
                        let message = format!(
                            "entra-db-proxy: the upstream's response of {len} bytes exceeds the listener's max_frame_size of {} bytes",
                            max + HEADER_LEN
                        );
                        let error =
                            error_frame(self.version, stream, codes::SERVER_ERROR, &message);
                        enc.encode(&error, &mut out);
                        let _ = cw.write_all(&out).await;
                        let _ = cw.shutdown().await;
                        return CloseReason::UpstreamProtocol;
                    }
                    Err(e) => {
                        tracing::warn!(error = %Escaped(&e.to_string()), "unreadable frame from the upstream; closing");
                        return CloseReason::UpstreamProtocol;
                    }
                }
                if !out.is_empty() {
                    if !client_gone && cw.write_all(&out).await.is_err() {
                        client_gone = true;
                    }
                    out.clear();
                }
                // In the middle of a frame relayed as it arrives, nothing else may be written to
                // the client: the proxy's own replies wait for its end.
                let passing = dec.is_passing();
                tokio::select! {
                    r = read_some(&mut ur, &mut buf) => match r {
                        Ok(0) | Err(_) => {
                            let _ = cw.shutdown().await;
                            return CloseReason::UpstreamClosed;
                        }
                        Ok(n) => {
                            self.to_client.fetch_add(n as u64, Ordering::Relaxed);
                            metrics.bytes_to_client.inc_by(n as u64);
                            self.touch();
                        }
                    },
                    reply = reply_rx.recv(), if !passing => match reply {
                        Some((frame, close)) => {
                            enc.encode(&frame, &mut out);
                            if close {
                                let _ = cw.write_all(&out).await;
                                let _ = cw.shutdown().await;
                                return CloseReason::ClientProtocol;
                            }
                        }
                        None => return CloseReason::ClientClosed,
                    }
                }
            }
        };

        let idle = async {
            let Some(limit) = self.service.idle_timeout else {
                return std::future::pending().await;
            };
            loop {
                let last = self.last_activity_ms.load(Ordering::Relaxed);
                let deadline = self.started + Duration::from_millis(last) + limit;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep_until(deadline.into()).await;
            }
        };

        tokio::pin!(upstream_to_client, idle);
        let end = tokio::select! {
            end = &mut upstream_to_client => return end,
            end = client_to_upstream => end,
            _ = &mut idle => return CloseReason::IdleTimeout,
        };
        match end {
            // The other side writes the ERROR and ends the session.
            CloseReason::ClientProtocol => tokio::select! {
                end = &mut upstream_to_client => end,
                _ = &mut idle => CloseReason::IdleTimeout,
            },
            // The client sent its last bytes (the upstream was told with a shutdown) and may
            // still be reading, after a half-close: the answers to what it sent are relayed,
            // and their request charges counted, until the upstream closes too or for at most
            // CLIENT_CLOSE_LINGER.
            CloseReason::ClientClosed => {
                let _ = tokio::time::timeout(CLIENT_CLOSE_LINGER, &mut upstream_to_client).await;
                end
            }
            end => end,
        }
    }
}

/// How long answers still in flight when the client closes its side are waited for.
const CLIENT_CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Where to address the ERROR for a decoding error: the offending header's version and stream
/// when the error knows them; else, in legacy framing, what the header in `buf` says; in v5
/// framing (`buf` holds segments, not a frame header: a bad CRC, a garbled segment) v5 and
/// stream 0, since no frame can be named.
fn addressee_of(e: &CqlError, buf: &[u8], framing: Framing) -> (u8, i16) {
    match e {
        CqlError::FrameTooLarge {
            version, stream, ..
        }
        | CqlError::RequestTooBig {
            version, stream, ..
        } => (*version, *stream),
        _ if framing != Framing::Legacy => (5, 0),
        _ => addressee(buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_in_v5_framing_name_no_frame() {
        // Segment bytes are not a frame header: whatever they look like, v5 and stream 0.
        let segment = [0x85, 0, 0, 7, 0x07, 0, 0, 0, 0];
        let crc = CqlError::SegmentCrc {
            part: "header",
            computed: 1,
            received: 2,
        };
        assert_eq!(
            addressee_of(&crc, &segment[1..], Framing::V5 { lz4: false }),
            (5, 0)
        );
        assert_eq!(addressee_of(&crc, &segment, Framing::Legacy), (5, 7));
    }
}
