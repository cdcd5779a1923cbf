//! Azure Cosmos DB for Apache Cassandra specifics, sans-IO: its request-rate Overloaded, the
//! retry of throttled requests, and the request charge.
//!
//! * **Throttling.** When requests exceed the provisioned request units, Cosmos answers ERROR
//!   0x1001 (Overloaded) with a message shaped like `Request rate is large: ActivityID=…,
//!   RetryAfterMs=12, Additional details='Response status code does not indicate success:
//!   TooManyRequests (429); Substatus: 3200; …`. The request was not executed, so sending the
//!   same bytes again after the wait is safe ([`rate_limit`] recognises it).
//! * **Retry.** [`RetryTracker`] keeps a copy of each QUERY / EXECUTE / BATCH request until its
//!   response, within a per-connection byte cap, and decides per response: relay it, or resend
//!   the kept request after a wait ([`RetryPolicy`]: attempts and total wait, in the spirit of
//!   the Java extension's `CosmosRetryPolicy` and the Cosmos SDKs: at most 9 retries, the server's `RetryAfterMs`,
//!   a fixed backoff when the message has none). Once the budget is spent the original error
//!   is relayed unchanged.
//! * **Request charge.** Cosmos puts each request's charge in the response's custom payload
//!   (flag 0x04): a `[bytes map]` whose `RequestCharge` is an 8-byte big-endian double.
//!   [`request_charge`] reads it from the body in place.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;

use crate::{
    frame::{BodyCompression, Frame, FrameHeader, flags, opcode},
    messages::codes,
    wire::Reader,
};

/// The Cosmos DB host suffix: listeners whose upstream ends with it are Cosmos listeners.
pub const COSMOS_HOST_SUFFIX: &str = ".cosmos.azure.com";

/// True for a Cosmos DB host name (`<account>.cassandra.cosmos.azure.com`).
pub fn is_cosmos_host(host: &str) -> bool {
    host.to_ascii_lowercase()
        .trim_end_matches('.')
        .ends_with(COSMOS_HOST_SUFFIX)
}

/// How throttled requests are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries per request (0: none).
    pub max_retries: u32,
    /// The most a request may wait in total across its retries.
    pub max_wait: Duration,
    /// The wait when the message names none.
    pub fixed_backoff: Duration,
    /// Bytes of requests kept for retry per connection; past it, requests are not kept.
    pub max_held_bytes: usize,
}

/// Retries per request by default: the Cosmos DB SDKs' 9 for throttled requests (the Java
/// extension's `max-retries` is 5; at 20 % throttling one request in 15,000 would still fail
/// with 5, one in ten million with 9).
pub const DEFAULT_MAX_RETRIES: u32 = 9;
/// The longest total wait by default. Drivers time requests out after 2 s (Java 4.x), 10–12 s
/// (Python, gocql, Node): the wait counts against that, and a request held past it is lost to
/// the driver anyway.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(5);
/// The wait when Cosmos names none (the Java extension waits 5 s; shorter here, for the
/// drivers' request timeouts above).
pub const DEFAULT_FIXED_BACKOFF: Duration = Duration::from_secs(1);
/// Request bytes kept for retry per connection by default.
pub const DEFAULT_MAX_HELD_BYTES: usize = 4 * 1024 * 1024;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: DEFAULT_MAX_RETRIES,
            max_wait: DEFAULT_MAX_WAIT,
            fixed_backoff: DEFAULT_FIXED_BACKOFF,
            max_held_bytes: DEFAULT_MAX_HELD_BYTES,
        }
    }
}

/// Cosmos's request-rate Overloaded: `Some(wait)` (`None` inside if the message names no
/// `RetryAfterMs`); `None` for any other response, other Overloaded errors included.
pub fn rate_limit(
    frame: &Frame,
    compression: BodyCompression,
    max: usize,
) -> Option<Option<Duration>> {
    if frame.header.opcode != opcode::ERROR {
        return None;
    }
    let body = frame.plain_body(compression, max).ok()?;
    let mut r = Reader::new(&body, "ERROR body");
    r.skip(crate::topology::response_prefix_len(&body, frame.header.flags).ok()?)
        .ok()?;
    if r.int().ok()? != codes::OVERLOADED {
        return None;
    }
    let message = r.string().ok()?;
    let is_rate =
        message.starts_with("Request rate is large") || message.contains("TooManyRequests (429)");
    if !is_rate {
        return None;
    }
    Some(retry_after(message))
}

/// `RetryAfterMs=<n>` in a message.
fn retry_after(message: &str) -> Option<Duration> {
    let at = message.find("RetryAfterMs=")? + "RetryAfterMs=".len();
    let digits: &str = &message[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok().map(Duration::from_millis)
}

/// The `RequestCharge` of a response, read in place from the start of its body (`prefix`: the
/// body or its first bytes). `None` without a custom payload, for a compressed body, or when
/// the payload holds no 8-byte `RequestCharge` (or is cut off in `prefix`).
pub fn request_charge(header: &FrameHeader, prefix: &[u8]) -> Option<f64> {
    if header.flags & flags::CUSTOM_PAYLOAD == 0 || header.flags & flags::COMPRESSION != 0 {
        return None;
    }
    let mut r = Reader::new(prefix, "custom payload");
    if header.flags & flags::TRACING != 0 {
        r.skip(16).ok()?;
    }
    if header.flags & flags::WARNING != 0 {
        r.string_list().ok()?;
    }
    let n = r.short().ok()?;
    for _ in 0..n {
        let key = r.string().ok()?;
        let value = r.bytes().ok()?;
        if key == "RequestCharge" {
            let v: [u8; 8] = value?.try_into().ok()?;
            return Some(f64::from_be_bytes(v)).filter(|c| c.is_finite() && *c >= 0.0);
        }
    }
    None
}

/// A request kept for retry.
#[derive(Debug)]
struct Held {
    frame: Frame,
    retries: u32,
    waited: Duration,
}

/// What to do with a response ([`RetryTracker::on_response`]).
#[derive(Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Not a rate limit: relay it.
    Relay,
    /// A rate limit: resend `frame` (the kept request, same stream) after `after`; the
    /// response is not relayed.
    Retry {
        /// The wait.
        after: Duration,
        /// The request, as the client sent it.
        frame: Frame,
    },
    /// A rate limit that is relayed: the budget is spent, or the request was not kept.
    GiveUp,
}

/// The requests of one connection kept for retry, by stream.
#[derive(Debug)]
pub struct RetryTracker {
    policy: RetryPolicy,
    held: HashMap<i16, Held>,
    held_bytes: usize,
}

impl RetryTracker {
    /// An empty tracker.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryTracker {
            policy,
            held: HashMap::new(),
            held_bytes: 0,
        }
    }

    /// Bytes kept now.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// A request relayed to the upstream: QUERY, EXECUTE and BATCH are kept (a copy of their
    /// bytes) if the connection's cap allows; returns whether it was kept.
    pub fn on_request(&mut self, frame: &Frame) -> bool {
        let stream = frame.header.stream;
        self.forget(stream);
        if self.policy.max_retries == 0
            || !matches!(
                frame.header.opcode,
                opcode::QUERY | opcode::EXECUTE | opcode::BATCH
            )
        {
            return false;
        }
        let len = frame.encoded_len();
        if self
            .held_bytes
            .checked_add(len)
            .is_none_or(|total| total > self.policy.max_held_bytes)
        {
            return false;
        }
        let frame = Frame {
            header: frame.header,
            body: Bytes::copy_from_slice(&frame.body),
        };
        self.held_bytes += len;
        self.held.insert(
            stream,
            Held {
                frame,
                retries: 0,
                waited: Duration::ZERO,
            },
        );
        true
    }

    /// Nothing is kept for `stream` any more (its request or response was relayed as it
    /// arrived, unread).
    pub fn forget(&mut self, stream: i16) {
        if let Some(h) = self.held.remove(&stream) {
            self.held_bytes -= h.frame.encoded_len();
        }
    }

    /// A whole response from the upstream.
    pub fn on_response(
        &mut self,
        frame: &Frame,
        compression: BodyCompression,
        max: usize,
    ) -> RetryDecision {
        let stream = frame.header.stream;
        let Some(wait) = rate_limit(frame, compression, max) else {
            self.forget(stream);
            return RetryDecision::Relay;
        };
        let after = wait.unwrap_or(self.policy.fixed_backoff);
        let policy = self.policy;
        let Some(held) = self.held.get_mut(&stream) else {
            return RetryDecision::GiveUp;
        };
        // Checked: with an unbounded budget (`max_wait` = `Duration::MAX`) and the server's
        // `RetryAfterMs` at its largest, the sum of the waits would overflow.
        let waited = match held.waited.checked_add(after) {
            Some(w) if held.retries < policy.max_retries && w <= policy.max_wait => w,
            _ => {
                self.forget(stream);
                return RetryDecision::GiveUp;
            }
        };
        held.retries += 1;
        held.waited = waited;
        RetryDecision::Retry {
            after,
            frame: held.frame.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
