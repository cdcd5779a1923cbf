//! The Kubernetes API answers' parsers and the pod table's updates, exposed for the fuzz
//! targets in `fuzz/` (the `fuzzing` feature; not part of the crate's API). Each wraps what
//! the client or the list+watch task itself calls, with the endpoint names they use.

pub use crate::{
    client::{KubeError, PodObject, ServiceAccount, WatchEvent},
    pods::{Lookup, PodInfo, PodTable},
};
pub use dbproxy_credentials::Secret;

/// The endpoint the pod list comes from.
pub const LIST_ENDPOINT: &str = "GET /api/v1/pods";
/// The endpoint the watch events come from.
pub const WATCH_ENDPOINT: &str = "GET /api/v1/pods?watch=true";

/// A `PodList` answer: its items and resource version.
pub fn parse_pod_list(body: &[u8]) -> Result<(Vec<PodObject>, String), KubeError> {
    crate::client::parse::pod_list(body, LIST_ENDPOINT)
}

/// One watch line.
pub fn parse_event(line: &[u8]) -> Result<WatchEvent, KubeError> {
    crate::client::parse::parse_event(line, WATCH_ENDPOINT)
}

/// A `ServiceAccount` answer.
pub fn parse_service_account(body: &[u8]) -> Result<ServiceAccount, KubeError> {
    crate::client::parse::service_account(body, "GET /api/v1/namespaces/n/serviceaccounts/sa")
}

/// A TokenRequest answer: its token.
pub fn parse_token_response(body: &[u8]) -> Result<Secret, KubeError> {
    crate::client::parse::token_response(body, "POST /api/v1/namespaces/n/serviceaccounts/sa/token")
}

/// The message the client keeps of an error answer's body (a `Status`, or any text).
pub fn status_message(text: &str) -> String {
    crate::client::parse::status_message(text)
}

/// The watch stream's line splitter, fed with the HTTP body's chunks.
#[derive(Debug, Default)]
pub struct WatchLines(crate::client::parse::WatchLines);

impl WatchLines {
    /// Feeds one chunk; complete lines' events go to `on_event`.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(WatchEvent),
    ) -> Result<(), KubeError> {
        self.0.feed(chunk, WATCH_ENDPOINT, &mut on_event)
    }

    /// Bytes waiting for their newline.
    pub fn pending(&self) -> usize {
        self.0.pending()
    }
}

/// What the task does with a successful list: the table becomes exactly these pods, synced.
pub fn replace(table: &PodTable, items: &[PodObject]) {
    table.replace(items)
}

/// What the task does with a watch event.
pub fn apply(table: &PodTable, event: &WatchEvent) {
    table.apply(event)
}

/// What the task does when the API fails: the table is no longer current.
pub fn unsync(table: &PodTable, why: &str) {
    table.unsync(why.to_owned())
}
