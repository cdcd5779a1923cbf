//! Faults the fake injects on request: identity endpoints that hang, ARM answering 429 / 5xx.
//!
//! * [`Hang`] ([`FakeAzure::set_identity_hang`](super::FakeAzure::set_identity_hang)): the
//!   token endpoints (IMDS, App Service, Entra v2) take the request and then either never
//!   answer ([`Hang::NoAnswer`]: the connection stays open, nothing is written) or answer
//!   `200` with its headers and the first bytes of a JSON body and then nothing more
//!   ([`Hang::StalledBody`]: chunked, never finished). A hung request stays hung after the
//!   fault is lifted, as a real stuck connection would; only new requests are answered again.
//!   [`FakeAzure::hung_requests`](super::FakeAzure::hung_requests) counts them.
//! * [`ArmFault`] ([`FakeAzure::queue_arm_faults`](super::FakeAzure::queue_arm_faults), the
//!   next requests in order; [`FakeAzure::set_arm_failing`](super::FakeAzure::set_arm_failing),
//!   every request until cleared): ARM's error body `{"error":{"code","message"}}` with 429
//!   `TooManyRequests` and `Retry-After: <seconds>`, or 500 `InternalServerError`, 503
//!   `ServiceUnavailable` (or any other status, code `Error<status>`). The faults apply before
//!   every other check (token, account), as ARM's front door throttles first.

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use futures_util::StreamExt as _;

use super::{json_response, obj, s};

/// How the identity endpoints hang (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hang {
    /// They answer.
    #[default]
    No,
    /// The request is read and never answered.
    NoAnswer,
    /// `200`, the headers and the first bytes of the body, then nothing.
    StalledBody,
}

/// Whether `path` is one of the token endpoints [`Hang`] applies to.
pub(crate) fn is_identity_path(path: &str) -> bool {
    path == "/metadata/identity/oauth2/token"
        || path == "/MSI/token"
        || path.ends_with("/oauth2/v2.0/token")
}

/// The response of a hung request: never, or a body that never ends.
pub(crate) async fn hang(how: Hang) -> Response {
    if how == Hang::NoAnswer {
        return std::future::pending().await;
    }
    let first = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(Bytes::from_static(b"{\"token_type\":\"Bearer\","))
    });
    let body = Body::from_stream(first.chain(futures_util::stream::pending()));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// One failed ARM answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArmFault {
    /// 429 `TooManyRequests` with `Retry-After: <seconds>`.
    Throttled {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// This HTTP status (500 `InternalServerError`, 503 `ServiceUnavailable`, …).
    Status(u16),
}

impl ArmFault {
    /// ARM's answer for the fault.
    pub(crate) fn response(self) -> Response {
        match self {
            ArmFault::Throttled { retry_after_secs } => {
                let mut r = arm_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "The request is being throttled as the limit has been reached for operation type - Read_ObservationWindow_00:05:00. For more information, refer to - https://aka.ms/srpthrottlinglimits",
                );
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
            ArmFault::Status(code) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let tracking = crate::tokens::random_guid();
                match status.as_u16() {
                    500 => arm_error(
                        status,
                        "InternalServerError",
                        &format!(
                            "Encountered internal server error. Diagnostic information: timestamp '{}', tracking id '{tracking}', request correlation id '{}'.",
                            super::entra_timestamp(),
                            crate::tokens::random_guid()
                        ),
                    ),
                    503 => arm_error(
                        status,
                        "ServiceUnavailable",
                        &format!(
                            "The service is temporarily unavailable. Please try again later. Tracking id '{tracking}'."
                        ),
                    ),
                    n => arm_error(status, &format!("Error{n}"), "The request failed."),
                }
            }
        }
    }
}

/// ARM's error body: `{"error":{"code":…,"message":…}}`.
pub(crate) fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        format!(
            "{{\"error\":{}}}",
            obj(&[("code", s(code)), ("message", s(message))])
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        azure::{FakeAzure, FakeAzureConfig},
        certs::TestCa,
    };

    #[tokio::test]
    async fn arm_faults_in_order_then_lasting_then_cleared() {
        let ca = TestCa::new("faults test CA");
        let fake = FakeAzure::start(&ca, FakeAzureConfig::default())
            .await
            .unwrap();
        let http = ca.reqwest_client();
        let url = fake.list_keys_url("acct");
        fake.queue_arm_faults(&[
            ArmFault::Throttled {
                retry_after_secs: 7,
            },
            ArmFault::Status(500),
        ]);
        fake.set_arm_failing(Some(ArmFault::Status(503)));
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = http.post(&url).send().await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let v: serde_json::Value = r.json().await.unwrap();
            assert!(v["error"]["message"].as_str().is_some(), "{v}");
            seen.push((
                status,
                v["error"]["code"].as_str().unwrap().to_owned(),
                retry_after,
            ));
        }
        assert_eq!(
            seen,
            [
                (429, "TooManyRequests".into(), Some("7".into())),
                (500, "InternalServerError".into(), None),
                (503, "ServiceUnavailable".into(), None),
            ]
        );
        fake.set_arm_failing(None);
        // Past the faults, ARM's own checks again: no token here.
        let r = http.post(&url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(fake.arm_requests().len(), 4);
    }

    #[tokio::test]
    async fn hung_token_endpoints_never_finish_and_others_answer() {
        let ca = TestCa::new("faults test CA");
        let fake = FakeAzure::start(&ca, FakeAzureConfig::default())
            .await
            .unwrap();
        let http = ca.reqwest_client();
        let imds = format!(
            "{}?api-version=2018-02-01&resource=x",
            fake.imds_token_url()
        );
        fake.set_identity_hang(Hang::NoAnswer);
        let r = tokio::time::timeout(
            Duration::from_millis(300),
            http.get(&imds).header("Metadata", "true").send(),
        )
        .await;
        assert!(r.is_err(), "no answer at all");
        fake.set_identity_hang(Hang::StalledBody);
        let r = http
            .post(fake.token_url())
            .send()
            .await
            .expect("the headers come");
        assert_eq!(r.status().as_u16(), 200);
        let body = tokio::time::timeout(Duration::from_millis(300), r.bytes()).await;
        assert!(body.is_err(), "the body never ends");
        // ARM is no identity endpoint: it answers.
        let r = http.post(fake.list_keys_url("a")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        fake.set_identity_hang(Hang::No);
        let r = http
            .get(&imds)
            .header("Metadata", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(fake.hung_requests(), 2);
    }
}
