//! [`PasswordFile`]: a password read from a file. **For development only** (a local
//! Cassandra or PostgreSQL with a plain password): production deployments use Entra tokens or
//! Cosmos DB keys fetched with an Entra identity, so that no long-lived secret sits on disk.
//!
//! The file is read on every [`PasswordSource::password`] call (it is tiny), so edits take
//! effect for the next login; one trailing newline (`\n` or `\r\n`) is removed, nothing else.

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::SystemTime,
};

use crate::{
    error::CredentialError, password::PasswordSource, refresh::CacheStatus, secret::Secret,
};

#[derive(Default)]
struct State {
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    reads_ok: u64,
    reads_failed: u64,
}

/// A password kept in a file (development only; see the module notes).
pub struct PasswordFile {
    path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// A source reading `path` (nothing is read until a password is asked for).
    pub fn new(path: PathBuf) -> PasswordFile {
        PasswordFile {
            path,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read(&self) -> Result<Secret, CredentialError> {
        let result = match tokio::fs::read_to_string(&self.path).await {
            Ok(raw) => {
                let value = raw
                    .strip_suffix("\r\n")
                    .or_else(|| raw.strip_suffix('\n'))
                    .unwrap_or(&raw);
                if value.is_empty() {
                    Err(CredentialError::config(
                        PasswordSource::describe(self),
                        "the password file is empty",
                    ))
                } else {
                    Ok(Secret::new(value))
                }
            }
            Err(e) => Err(CredentialError::config(
                PasswordSource::describe(self),
                format!("cannot read the password file: {e}"),
            )),
        };
        let mut st = self.lock();
        match &result {
            Ok(_) => {
                st.last_success = Some(SystemTime::now());
                st.last_error = None;
                st.reads_ok += 1;
            }
            Err(e) => {
                st.last_error = Some(e.to_string());
                st.reads_failed += 1;
            }
        }
        result
    }
}

#[async_trait::async_trait]
impl PasswordSource for PasswordFile {
    fn describe(&self) -> String {
        format!("password file {} (development only)", self.path.display())
    }

    async fn password(&self) -> Result<Secret, CredentialError> {
        self.read().await
    }

    /// Re-reads the file: its new contents if they changed, else `None`.
    async fn after_rejection(&self, rejected: &Secret) -> Result<Option<Secret>, CredentialError> {
        let now = self.read().await?;
        Ok((&now != rejected).then_some(now))
    }

    fn status(&self) -> CacheStatus {
        let st = self.lock();
        CacheStatus {
            expires_on: None,
            last_success: st.last_success,
            last_error: st.last_error.clone(),
            refreshes_ok: st.reads_ok,
            refreshes_failed: st.reads_failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_trims_one_newline_and_rereads() {
        let dir =
            std::env::temp_dir().join(format!("dbproxy-pwfile-{}", crate::certificate::uuid_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        let p = PasswordFile::new(path.clone());
        assert!(p.describe().contains("development only"));
        let e = p.password().await.unwrap_err();
        assert!(
            e.to_string().contains("cannot read the password file"),
            "{e}"
        );
        std::fs::write(&path, "hunter2 \n\n").unwrap();
        assert_eq!(p.password().await.unwrap().expose(), "hunter2 \n");
        std::fs::write(&path, "hunter2\r\n").unwrap();
        let pw = p.password().await.unwrap();
        assert_eq!(pw.expose(), "hunter2");
        assert_eq!(p.after_rejection(&pw).await.unwrap(), None);
        std::fs::write(&path, "hunter3").unwrap();
        assert_eq!(
            p.after_rejection(&pw).await.unwrap().unwrap().expose(),
            "hunter3"
        );
        std::fs::write(&path, "\n").unwrap();
        let e = p.password().await.unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let s = p.status();
        assert_eq!((s.refreshes_ok, s.refreshes_failed), (4, 2));
        assert!(s.last_error.is_some());
        assert!(!format!("{p:?} {s:?}").contains("hunter"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
