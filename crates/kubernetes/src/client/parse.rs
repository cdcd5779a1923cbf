//! The Kubernetes API's answers, parsed without I/O (the HTTP calls are in `client`): a pod
//! list, the watch stream's lines and events, a service account, a TokenRequest answer, and
//! the `Status` body of an error.

use serde::Deserialize;

use dbproxy_credentials::Secret;

use super::{KubeError, ObjectMeta, PodObject, ServiceAccount, WatchEvent};

/// The longest watch line buffered while no newline ends it: a pod object is a few KiB, so
/// 4 MiB is plenty.
pub(crate) const MAX_WATCH_LINE: usize = 4 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<PodObject>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8], endpoint: &str) -> Result<T, KubeError> {
    serde_json::from_slice(body).map_err(|e| KubeError::Parse {
        endpoint: endpoint.to_owned(),
        message: e.to_string(),
    })
}

/// A `PodList`: its items and its resource version.
pub(crate) fn pod_list(body: &[u8], endpoint: &str) -> Result<(Vec<PodObject>, String), KubeError> {
    let list: PodList = json(body, endpoint)?;
    Ok((list.items, list.metadata.resource_version))
}

/// A `ServiceAccount`: its annotations.
pub(crate) fn service_account(body: &[u8], endpoint: &str) -> Result<ServiceAccount, KubeError> {
    #[derive(Deserialize)]
    struct Sa {
        #[serde(default)]
        metadata: ObjectMeta,
    }
    let sa: Sa = json(body, endpoint)?;
    Ok(ServiceAccount {
        annotations: sa.metadata.annotations,
    })
}

/// A TokenRequest answer: its non-empty `status.token`. The body holds the token, so no
/// error quotes it: the two errors are fixed messages.
pub(crate) fn token_response(body: &[u8], endpoint: &str) -> Result<Secret, KubeError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| KubeError::Parse {
        endpoint: endpoint.to_owned(),
        message: "the TokenRequest answer is not JSON".into(),
    })?;
    match v["status"]["token"].as_str() {
        Some(t) if !t.is_empty() => Ok(Secret::new(t)),
        _ => Err(KubeError::Parse {
            endpoint: endpoint.to_owned(),
            message: "the TokenRequest answer has no status.token".into(),
        }),
    }
}

/// The message of a Kubernetes Status body (or a short excerpt of the text).
pub(crate) fn status_message(text: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text)
        && let Some(m) = v["message"].as_str().or(v["reason"].as_str())
    {
        return m.chars().take(300).collect();
    }
    text.chars().take(200).collect()
}

/// One line of a watch: an event.
pub(crate) fn parse_event(line: &[u8], endpoint: &str) -> Result<WatchEvent, KubeError> {
    let parse = |message: String| KubeError::Parse {
        endpoint: endpoint.into(),
        message,
    };
    let raw: RawEvent = serde_json::from_slice(line).map_err(|e| parse(e.to_string()))?;
    let pod = |o: serde_json::Value| -> Result<PodObject, KubeError> {
        serde_json::from_value(o).map_err(|e| parse(e.to_string()))
    };
    Ok(match raw.kind.as_str() {
        "ADDED" => WatchEvent::Added(pod(raw.object)?),
        "MODIFIED" => WatchEvent::Modified(pod(raw.object)?),
        "DELETED" => WatchEvent::Deleted(pod(raw.object)?),
        "BOOKMARK" => WatchEvent::Bookmark(
            raw.object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        "ERROR" => WatchEvent::Error {
            code: raw.object["code"].as_u64().unwrap_or(0) as u16,
            message: raw.object["message"].as_str().unwrap_or("").to_owned(),
        },
        other => return Err(parse(format!("unknown watch event type {other:?}"))),
    })
}

/// The watch stream cut into lines, one event a line, as the chunks of the HTTP body arrive.
#[derive(Debug, Default)]
pub(crate) struct WatchLines {
    buf: Vec<u8>,
}

impl WatchLines {
    /// Appends `chunk` and hands every complete line's event to `on_event` (blank lines
    /// skipped). An unparsable line, or more than [`MAX_WATCH_LINE`] bytes without a newline,
    /// is an error.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        endpoint: &str,
        on_event: &mut impl FnMut(WatchEvent),
    ) -> Result<(), KubeError> {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > MAX_WATCH_LINE && !self.buf.contains(&b'\n') {
            return Err(KubeError::Parse {
                endpoint: endpoint.into(),
                message: "a watch event over 4 MiB".into(),
            });
        }
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            on_event(parse_event(&line, endpoint)?);
        }
        Ok(())
    }

    /// Bytes waiting for their newline.
    #[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }
}
