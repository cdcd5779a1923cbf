//! Small process-level helpers: unique temp dirs, free ports, the `postgres` system user, and
//! what the stand-in binaries share (their variables file, waiting for a stop signal).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::Context as _;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// Whether this process runs as root (PostgreSQL then has to run as another user).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `KEEP_TEST_DIRS` asks to keep temp dirs for post-mortems.
pub fn keep_test_dirs() -> bool {
    std::env::var_os("KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A new, empty, uniquely named directory under the temp dir, mode 0700.
///
/// When running as root the base is a directory every user can traverse (`$TMPDIR` if it is,
/// else `/tmp`), so the directory can be handed to the `postgres` user.
pub fn unique_temp_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let mut base = std::env::temp_dir();
    if is_root() && !traversable_by_all(&base) {
        base = PathBuf::from("/tmp");
    }
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = base.join(format!(
        "dbproxy-{tag}-{}-{n}-{:x}",
        std::process::id(),
        nanos & 0xffff
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))?;
    Ok(dir)
}

fn traversable_by_all(dir: &Path) -> bool {
    dir.ancestors().all(|p| {
        p.as_os_str().is_empty()
            || std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    })
}

/// A currently free TCP port on 127.0.0.1 (bind :0, read it, close). Another process can take
/// it before it is used: callers that hand it to a child retry on "address in use".
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr().context("local_addr")?.port())
}

/// uid and gid of a system user, from /etc/passwd.
pub fn lookup_user(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            let uid = f[2].parse().context("uid in /etc/passwd")?;
            let gid = f[3].parse().context("gid in /etc/passwd")?;
            return Ok((uid, gid));
        }
    }
    anyhow::bail!("no user {name:?} in /etc/passwd (PostgreSQL refuses to run as root)")
}

/// chown a path (not recursive).
pub fn chown(path: &Path, ids: Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// Writes a file with a mode and owner.
pub fn write_file(
    path: &Path,
    contents: impl AsRef<[u8]>,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    chown(path, owner)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A [`unique_temp_dir`] removed on drop (kept if `KEEP_TEST_DIRS` is set).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates it.
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        Ok(TempDir {
            path: unique_temp_dir(tag)?,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if keep_test_dirs() {
            eprintln!("KEEP_TEST_DIRS: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes `vars` as `KEY='value'` lines to `path` atomically (a stand-in's variables file,
/// sourced by scripts once it appears).
pub fn write_env_file(path: &Path, vars: &[(&str, String)]) -> anyhow::Result<()> {
    let text: String = vars.iter().map(|(k, v)| format!("{k}='{v}'\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
pub async fn stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
