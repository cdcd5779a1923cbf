//! Test doubles for driving whole sessions in memory: an upstream connector over
//! `tokio::io::duplex`, and a password source with a scripted sequence of passwords.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use dbproxy_credentials::{CacheStatus, CredentialError, PasswordSource, Secret};
use tokio::{
    io::DuplexStream,
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
};

use crate::upstream::{ConnectError, Connector};

/// A connector whose every connection is an in-memory pipe; the far end goes to the test's
/// fake server through a channel.
pub struct MemoryUpstream {
    tx: UnboundedSender<DuplexStream>,
    /// Connections made.
    pub connects: Arc<AtomicUsize>,
}

impl MemoryUpstream {
    /// The connector and the receiver of the server ends.
    pub fn new() -> (MemoryUpstream, UnboundedReceiver<DuplexStream>) {
        let (tx, rx) = unbounded_channel();
        let up = MemoryUpstream {
            tx,
            connects: Arc::new(AtomicUsize::new(0)),
        };
        (up, rx)
    }
}

impl std::fmt::Display for MemoryUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory-upstream:1")
    }
}

impl Connector for MemoryUpstream {
    type Stream = DuplexStream;

    async fn connect(&self) -> Result<DuplexStream, ConnectError> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        self.tx.send(theirs).map_err(|_| ConnectError::Tcp {
            target: self.to_string(),
            reason: "connection refused".into(),
        })?;
        Ok(ours)
    }
}

/// Hands out `passwords` in order: the first for `password`, the next after each rejection.
#[derive(Default)]
pub struct ScriptedPasswords {
    queue: Mutex<VecDeque<String>>,
    /// How many rejections were reported.
    pub rejections: AtomicUsize,
}

impl ScriptedPasswords {
    pub fn new(passwords: &[&str]) -> Arc<ScriptedPasswords> {
        Arc::new(ScriptedPasswords {
            queue: Mutex::new(passwords.iter().map(|p| p.to_string()).collect()),
            rejections: AtomicUsize::new(0),
        })
    }

    fn current(&self) -> Option<Secret> {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.front().map(|p| Secret::new(p.clone()))
    }
}

#[async_trait::async_trait]
impl PasswordSource for ScriptedPasswords {
    fn describe(&self) -> String {
        "scripted passwords".into()
    }

    async fn password(&self) -> Result<Secret, CredentialError> {
        Ok(self.current().unwrap_or_else(|| Secret::new("none left")))
    }

    async fn after_rejection(&self, _rejected: &Secret) -> Result<Option<Secret>, CredentialError> {
        self.rejections.fetch_add(1, Ordering::SeqCst);
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.pop_front();
        Ok(q.front().map(|p| Secret::new(p.clone())))
    }

    fn status(&self) -> CacheStatus {
        CacheStatus::default()
    }
}
