//! Azure CLI: the developer's `az login` session.
//!
//! Runs `az account get-access-token -o json --scope <scope> [--tenant T]` (the same command
//! the Azure SDKs run) with a 10 s limit. `az` is looked up on the `PATH` of the
//! [`Env`](crate::Env) snapshot (else the process's). stdout is
//! `{"accessToken":"…","expiresOn":"2030-01-02 03:04:05.000000","expires_on":2147385600,…}`:
//! `expires_on` (epoch seconds, CLI ≥ 2.54) is preferred; `expiresOn` (local time) is the
//! fallback. On failure the first line of stderr is reported (e.g. "Please run 'az login' to
//! setup account."); stdout is never quoted since it may hold a token.
//!
//! Hand-written (not `azure_identity::AzureCliCredential`) so that `az` is found through our
//! environment snapshot and all sources share one error type; the command is the same.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, SystemTime},
};

use serde_json::Value;

use crate::{
    entra::check_id,
    error::{CredentialError, scrub},
    secret::{AccessToken, Secret},
    source::{CredentialOptions, TokenSource},
    wire::{epoch_seconds, lenient_u64},
};

const WHO: &str = "Azure CLI";

/// The Azure CLI token source.
pub(crate) struct AzureCli {
    tenant_id: Option<String>,
    /// `PATH` to search for `az` (from the snapshot).
    path: Option<String>,
    /// Other snapshot variables the CLI cares about (`AZURE_CONFIG_DIR`, `HOME`).
    extra_env: Vec<(String, String)>,
    pub(crate) timeout: Duration,
}

impl AzureCli {
    pub(crate) fn new(
        tenant_id: Option<String>,
        opts: &CredentialOptions,
    ) -> Result<Self, CredentialError> {
        if let Some(t) = &tenant_id {
            check_id(WHO, "tenant id", t)?;
        }
        let extra_env = ["AZURE_CONFIG_DIR", "HOME"]
            .iter()
            .filter_map(|k| Some((k.to_string(), opts.env.get(k)?.to_owned())))
            .collect();
        Ok(AzureCli {
            tenant_id,
            path: opts.env.get("PATH").map(str::to_owned),
            extra_env,
            timeout: Duration::from_secs(10),
        })
    }

    fn find_az(&self) -> Option<PathBuf> {
        let path = self
            .path
            .clone()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        let names: &[&str] = if cfg!(windows) {
            &["az.cmd", "az.exe"]
        } else {
            &["az"]
        };
        std::env::split_paths(&path)
            .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
            .find(|p| is_executable(p))
    }
}

#[cfg(unix)]
fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(p: &std::path::Path) -> bool {
    p.is_file()
}

/// Scopes are passed as a command-line argument: allow URL characters only.
fn check_scope(scope: &str) -> Result<(), CredentialError> {
    let ok = !scope.is_empty()
        && !scope.starts_with('-')
        && scope
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CredentialError::config(
            WHO,
            format!("scope {scope:?} contains characters not allowed in a scope"),
        ))
    }
}

/// "2030-01-02 03:04:05.000000" → (y, m, d, H, M, S).
fn parse_local(s: &str) -> Option<(i32, u8, u8, u8, u8, u8)> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let y = d.next()?.parse().ok()?;
    let mo = d.next()?.parse().ok()?;
    let da = d.next()?.parse().ok()?;
    let time = time.split('.').next()?;
    let mut t = time.split(':');
    let h = t.next()?.parse().ok()?;
    let mi = t.next()?.parse().ok()?;
    let se = t.next()?.parse().ok()?;
    Some((y, mo, da, h, mi, se))
}

/// Interprets the CLI's local-time `expiresOn`.
fn local_to_system(s: &str) -> Option<SystemTime> {
    let (y, mo, d, h, mi, se) = parse_local(s)?;
    let date = time::Date::from_calendar_date(y, time::Month::try_from(mo).ok()?, d).ok()?;
    let t = time::Time::from_hms(h, mi, se).ok()?;
    let offset = time::UtcOffset::current_local_offset().unwrap_or_else(|_| {
        tracing::debug!("local UTC offset unknown; reading the Azure CLI's expiresOn as UTC");
        time::UtcOffset::UTC
    });
    let ts = time::PrimitiveDateTime::new(date, t)
        .assume_offset(offset)
        .unix_timestamp();
    u64::try_from(ts).ok().and_then(epoch_seconds)
}

/// Parses the CLI's JSON output.
pub(crate) fn parse_output(stdout: &[u8]) -> Result<AccessToken, CredentialError> {
    let v: Value = serde_json::from_slice(stdout).map_err(|_| {
        CredentialError::invalid(
            WHO,
            "az account get-access-token",
            format!("output is not JSON ({} bytes)", stdout.len()),
        )
    })?;
    let token = match v.get("accessToken") {
        Some(Value::String(t)) if !t.is_empty() => Secret::new(t.clone()),
        _ => {
            return Err(CredentialError::invalid(
                WHO,
                "az account get-access-token",
                "no accessToken in the output",
            ));
        }
    };
    let expires_on = lenient_u64(v.get("expires_on"))
        .and_then(epoch_seconds)
        .or_else(|| {
            v.get("expiresOn")
                .and_then(Value::as_str)
                .and_then(local_to_system)
        })
        .ok_or_else(|| {
            CredentialError::invalid(
                WHO,
                "az account get-access-token",
                "neither expires_on nor expiresOn could be read",
            )
        })?;
    Ok(AccessToken { token, expires_on })
}

#[async_trait::async_trait]
impl TokenSource for AzureCli {
    fn describe(&self) -> String {
        match &self.tenant_id {
            Some(t) => format!("Azure CLI (tenant={t})"),
            None => "Azure CLI".to_owned(),
        }
    }

    async fn get_token(&self, scope: &str) -> Result<AccessToken, CredentialError> {
        check_scope(scope)?;
        let Some(az) = self.find_az() else {
            return Err(CredentialError::unavailable(
                self.describe(),
                "`az` was not found on PATH; install the Azure CLI and run 'az login'",
            ));
        };
        let mut cmd = tokio::process::Command::new(&az);
        cmd.args([
            "account",
            "get-access-token",
            "-o",
            "json",
            "--scope",
            scope,
        ]);
        if let Some(t) = &self.tenant_id {
            cmd.args(["--tenant", t]);
        }
        if let Some(p) = &self.path {
            cmd.env("PATH", p);
        }
        cmd.envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            CredentialError::unavailable(
                self.describe(),
                format!("could not run {}: {e}", az.display()),
            )
        })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(CredentialError::unavailable(
                    self.describe(),
                    format!("running {} failed: {e}", az.display()),
                ));
            }
            Err(_) => {
                return Err(CredentialError::Timeout {
                    who: self.describe(),
                    after: self.timeout,
                });
            }
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let line = scrub(&stderr, &[]);
            let line = line.strip_prefix("ERROR: ").unwrap_or(&line).to_owned();
            let message = if line.is_empty() {
                format!("`az account get-access-token` exited with {}", out.status)
            } else {
                format!("`az account get-access-token` failed: {line}")
            };
            // Not being logged in (or a CLI that cannot serve this scope) means this source
            // is not usable here: report it as unavailable so a chain can move on.
            return Err(CredentialError::unavailable(self.describe(), message));
        }
        parse_output(&out.stdout)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::testutil::{fake_az, opts_with, path_with};
    use std::time::UNIX_EPOCH;

    const SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

    #[tokio::test]
    async fn success_with_args() {
        let dir = fake_az(
            r#"echo "$@" > "$(dirname "$0")/args"
echo '{"accessToken":"cli-token","expiresOn":"2030-01-02 03:04:05.000000","expires_on":2147385600,"subscription":"s","tenant":"t","tokenType":"Bearer"}'"#,
        );
        let opts = opts_with(&[("PATH", path_with(&dir).as_str())]);
        let cli = AzureCli::new(Some("tenant-9".into()), &opts).unwrap();
        let t = cli.get_token(SCOPE).await.unwrap();
        assert_eq!(t.token.expose(), "cli-token");
        assert_eq!(t.expires_on, UNIX_EPOCH + Duration::from_secs(2147385600));
        let args = std::fs::read_to_string(dir.join("args")).unwrap();
        assert_eq!(
            args.trim(),
            format!("account get-access-token -o json --scope {SCOPE} --tenant tenant-9")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn not_logged_in() {
        let dir = fake_az("echo \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1");
        let opts = opts_with(&[("PATH", path_with(&dir).as_str())]);
        let cli = AzureCli::new(None, &opts).unwrap();
        let e = cli.get_token(SCOPE).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable);
        assert!(e.to_string().contains("Please run 'az login'"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn missing_and_slow() {
        let opts = opts_with(&[("PATH", "/nonexistent-dir")]);
        let cli = AzureCli::new(None, &opts).unwrap();
        let e = cli.get_token(SCOPE).await.unwrap_err();
        assert!(e.to_string().contains("not found on PATH"), "{e}");

        let dir = fake_az("sleep 5");
        let opts = opts_with(&[("PATH", path_with(&dir).as_str())]);
        let mut cli = AzureCli::new(None, &opts).unwrap();
        cli.timeout = Duration::from_millis(200);
        let e = cli.get_token(SCOPE).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        let e = cli.get_token("--evil").await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn output_parsing() {
        let t = parse_output(br#"{"accessToken":"x","expiresOn":"2030-01-02 03:04:05.000000"}"#)
            .unwrap();
        // Local time of the machine: within a day of the UTC reading.
        let utc = UNIX_EPOCH + Duration::from_secs(1893553445);
        let diff = t
            .expires_on
            .duration_since(utc)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap();
        assert!(diff <= Duration::from_secs(15 * 3600));
        let t = parse_output(br#"{"accessToken":"x","expires_on":"2147385600"}"#).unwrap();
        assert_eq!(t.expires_on, UNIX_EPOCH + Duration::from_secs(2147385600));
        let e = parse_output(b"{\"accessToken\":\"leaky\"").unwrap_err();
        assert!(!e.to_string().contains("leaky"));
        assert!(parse_output(br#"{"accessToken":"x"}"#).is_err());
        // A number beyond what SystemTime holds is no time (it used to overflow and panic).
        assert!(parse_output(br#"{"accessToken":"x","expires_on":1e300}"#).is_err());
        assert!(
            parse_output(br#"{"accessToken":"x","expires_on":"18446744073709551615"}"#).is_err()
        );
    }
}
