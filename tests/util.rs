//! Running the real `entra-db-proxy` binary in tests.
//!
//! The binary runs with a cleared environment (only what a test passes, plus PATH and HOME),
//! JSON logs at debug level unless told otherwise, and a listen address of port 0; the test
//! learns the bound address from the "listening" log line. Every log line is kept so that tests
//! can assert on it (and the secret-leak test can grep all of it). A failed wait prints the whole
//! log.
//!
//! When a [`Proxy`] is dropped at the end of a test that did not panic, its log must hold no
//! WARN or ERROR line other than those the test declared with [`ProxyCmd::expect_warnings`]
//! (substrings of the line): a test that provokes a failure says which warnings it provokes, and
//! any other one fails the test with the log.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// A running proxy process.
pub struct Proxy {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Listener name → bound address.
    pub addrs: BTreeMap<String, SocketAddr>,
    /// The admin server's address, if one was asked for.
    pub admin: Option<SocketAddr>,
    /// Listener name → Unix socket path.
    pub unix: BTreeMap<String, std::path::PathBuf>,
    /// Substrings of the WARN/ERROR lines this test expects (see the module docs).
    expected_warnings: Vec<String>,
    readers: Vec<JoinHandle<()>>,
}

/// How to start a proxy.
#[derive(Clone, Default)]
pub struct ProxyCmd {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub rust_log: Option<String>,
    /// Substrings of the WARN/ERROR lines the test expects (see the module docs).
    pub expected_warnings: Vec<String>,
    /// A soft open-file limit to start the proxy with.
    pub soft_nofile: Option<u64>,
}

impl ProxyCmd {
    pub fn new() -> Self {
        ProxyCmd::default()
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = Some(filter.into());
        self
    }
    /// Declares WARN/ERROR lines the test provokes: any such line containing one of `patterns`
    /// is allowed at the end of the test.
    pub fn expect_warnings(mut self, patterns: &[&str]) -> Self {
        self.expected_warnings
            .extend(patterns.iter().map(|p| (*p).to_owned()));
        self
    }

    fn command(&self, path_prefix: Option<&Path>) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_entra-db-proxy"));
        cmd.env_clear();
        let path = std::env::var("PATH").unwrap_or_default();
        let path = match path_prefix {
            Some(p) => format!("{}:{path}", p.display()),
            None => path,
        };
        cmd.env("PATH", path);
        if let Ok(home) = std::env::var("HOME") {
            cmd.env("HOME", home);
        }
        cmd.env("RUST_LOG", self.rust_log.as_deref().unwrap_or("debug"));
        cmd.env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if !self.args.iter().any(|a| a == "--log-format") {
            cmd.args(["--log-format", "json"]);
        }
        cmd.args(&self.args);
        cmd
    }

    /// Starts the proxy and waits until it logs "entra-db-proxy ready".
    pub fn spawn(&self) -> Proxy {
        self.spawn_with_path(None)
    }

    /// Like [`ProxyCmd::spawn`] with `dir` first on PATH (for a fake `az`).
    pub fn spawn_with_path(&self, dir: Option<&Path>) -> Proxy {
        let mut cmd = self.command(dir);
        if let Some(soft) = self.soft_nofile {
            use std::os::unix::process::CommandExt;
            let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard));
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn entra-db-proxy");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let lines = lines.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("EDP_SHOW_PROXY_LOG").is_some() {
                        eprintln!("proxy: {line}");
                    }
                    lines.lock().unwrap().push(line);
                }
            }));
        }
        let mut proxy = Proxy {
            child,
            lines,
            addrs: BTreeMap::new(),
            admin: None,
            unix: BTreeMap::new(),
            expected_warnings: self.expected_warnings.clone(),
            readers,
        };
        proxy.wait_for_line(
            |l| l.contains("entra-db-proxy ready"),
            Duration::from_secs(20),
        );
        for line in proxy.lines() {
            // Text logs (`--log-format text`): "… listening listener=NAME addr=ADDR …".
            if line.contains(" listening ")
                && let (Some(name), Some(addr)) =
                    (text_field(&line, "listener"), text_field(&line, "addr"))
                && !addr.starts_with("unix:")
            {
                proxy.addrs.insert(name.to_owned(), addr.parse().unwrap());
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "listening"
            {
                let name = v["listener"].as_str().unwrap().to_owned();
                let addr = v["addr"].as_str().unwrap();
                match addr.strip_prefix("unix:") {
                    Some(path) => {
                        proxy.unix.insert(name, path.into());
                    }
                    None => {
                        proxy.addrs.insert(name, addr.parse().unwrap());
                    }
                }
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("admin server listening"))
            {
                proxy.admin = v["addr"].as_str().and_then(|a| a.parse().ok());
            }
        }
        proxy
    }

    /// Runs the binary to completion (for configuration errors); returns (exit code, stderr).
    pub fn run_to_end(&self) -> (Option<i32>, String) {
        let out = self.command(None).output().expect("run entra-db-proxy");
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        (out.status.code(), text)
    }
}

impl Proxy {
    /// The address of the only (or first) listener.
    pub fn addr(&self) -> SocketAddr {
        *self.addrs.values().next().expect("a listener")
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    /// The WARN/ERROR lines logged so far that no expected pattern covers. A line that is not
    /// JSON (a panic message, say) counts when it mentions WARN, ERROR or "panicked".
    pub fn unexpected_warnings(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| is_warning(line))
            .filter(|line| !self.expected_warnings.iter().any(|p| line.contains(p)))
            .collect()
    }

    /// Waits until a logged line satisfies `pred`; panics with the log after `timeout`.
    pub fn wait_for_line(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain_readers();
                panic!(
                    "entra-db-proxy exited ({status}) before the expected log line:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out waiting for a log line; log so far:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After the process exited: lets the readers take in its last lines (the pipes close with
    /// it; bounded, in case a child of the proxy still holds them).
    fn drain_readers(&self) {
        let start = Instant::now();
        while self.readers.iter().any(|r| !r.is_finished())
            && start.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM without waiting.
    /// The process's soft and hard open-file limits, from /proc.
    pub fn open_files_limit(&self) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut numbers = line
            .split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok());
        (numbers.next().unwrap(), numbers.next().unwrap())
    }

    pub fn signal_term(&self) {
        unsafe { libc_kill(self.child.id() as i32, 15) };
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("proxy did not exit in {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(40) {
                let _ = self.child.kill();
                panic!("proxy did not exit after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A WARN or ERROR line of the proxy's log.
fn is_warning(line: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) => matches!(v["level"].as_str(), Some("WARN" | "ERROR")),
        Err(_) => ["WARN", "ERROR", "panicked"]
            .iter()
            .any(|w| line.contains(w)),
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- entra-db-proxy log ----\n{}\n----", self.log());
            return;
        }
        self.drain_readers();
        let unexpected = self.unexpected_warnings();
        if !unexpected.is_empty() {
            panic!(
                "entra-db-proxy logged {} unexpected WARN/ERROR line(s) (declare the ones the test \
                 provokes with expect_warnings):\n{}\n---- whole log ----\n{}",
                unexpected.len(),
                unexpected.join("\n"),
                self.log()
            );
        }
    }
}

/// Runs a command, returning (success, stdout, stderr); panics with context if it can't start.
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.0 GET against the admin server: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the admin server");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("admin answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of `key=value` in a text log line.
fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}
