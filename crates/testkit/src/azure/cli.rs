//! A fake Azure CLI: `az account get-access-token` backed by a [`FakeAzure`](super::FakeAzure).
//!
//! [`FakeAzure::install_fake_az`](super::FakeAzure::install_fake_az) writes an executable bash script named `az` (bash built-ins only, talking HTTP to
//! the fake over bash's `/dev/tcp`). It accepts
//! `az account get-access-token [-o|--output json] (--scope S | --resource R) [--tenant T]` and
//! prints, as the real CLI (≥ 2.54) does:
//! ```json
//! {
//!   "accessToken": "…",
//!   "expiresOn": "2030-01-02 03:04:05.000000",
//!   "expires_on": 1893553445,
//!   "subscription": "…",
//!   "tenant": "…",
//!   "tokenType": "Bearer"
//! }
//! ```
//! The token is issued through the fake (so `on_issue` fires, source [`TokenSource::AzCli`]).
//! Any other command line, or a logged-out fake, exits 1 with
//! `ERROR: Please run 'az login' to setup account.` on stderr; while the fake is down, or for an
//! unknown tenant, it exits 1 with an `ERROR: AADSTS…` line.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, atomic::Ordering},
};

use anyhow::Context as _;
use axum::{
    extract::{RawQuery, State},
    http::StatusCode,
    response::Response,
};

use super::{Shared, TokenSource, param, query_pairs, resource_of_scope};

/// The helper route the script calls.
pub(crate) const HELPER_PATH: &str = "/_testkit/az/get-access-token";

/// The message of a logged-out `az`.
pub const LOGIN_ERROR: &str = "ERROR: Please run 'az login' to setup account.";

const SCRIPT: &str = r#"#!/usr/bin/env bash
# Fake Azure CLI written by dbproxy-testkit: answers `az account get-access-token`
# from a FakeAzure listening on 127.0.0.1:__PORT__.
set -u
PORT=__PORT__
login_error() { echo "ERROR: Please run 'az login' to setup account." >&2; exit 1; }
[ "${1:-}" = account ] && [ "${2:-}" = get-access-token ] || login_error
shift 2
scope="" resource="" tenant="" output=json
while [ $# -gt 0 ]; do
  case "$1" in
    --scope|--scopes) [ $# -ge 2 ] || login_error; scope="$2"; shift 2 ;;
    --resource) [ $# -ge 2 ] || login_error; resource="$2"; shift 2 ;;
    --tenant|-t) [ $# -ge 2 ] || login_error; tenant="$2"; shift 2 ;;
    -o|--output) [ $# -ge 2 ] || login_error; output="$2"; shift 2 ;;
    --only-show-errors) shift ;;
    *) login_error ;;
  esac
done
[ "$output" = json ] || login_error
enc() {
  local s="$1" out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c="${s:i:1}"
    case "$c" in
      [a-zA-Z0-9.~_-]) out+="$c" ;;
      *) printf -v c '%%%02X' "'$c"; out+="$c" ;;
    esac
  done
  printf '%s' "$out"
}
# (a bare `exec ... 2>/dev/null` would silence stderr for the rest of the script)
{ exec 3<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null || {
  echo "ERROR: Failed to connect to the identity service (fake az: FakeAzure on port $PORT is gone)." >&2
  exit 1
}
# A FakeAzure going away can reset the connection before the request is written: a failed
# write, not a SIGPIPE that kills the script without a word.
trap '' PIPE
printf 'GET __PATH__?scope=%s&resource=%s&tenant=%s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nUser-Agent: fake-az\r\nConnection: close\r\n\r\n' \
  "$(enc "$scope")" "$(enc "$resource")" "$(enc "$tenant")" "$PORT" >&3 2>/dev/null || {
  echo "ERROR: Failed to connect to the identity service (fake az: FakeAzure on port $PORT reset the connection)." >&2
  exit 1
}
IFS= read -r status <&3 || { echo "ERROR: empty response from FakeAzure" >&2; exit 1; }
read -r _ code _ <<<"$status"
while IFS= read -r line <&3; do
  line="${line%$'\r'}"
  [ -z "$line" ] && break
done
body="$(cat <&3)"
exec 3<&-
if [ "$code" = 200 ]; then
  printf '%s\n' "$body"
  exit 0
fi
printf '%s\n' "$body" >&2
exit 1
"#;

/// Writes the fake `az` into `dir` for a fake listening (plain http) on `port`.
pub(crate) fn install(dir: &Path, port: u16) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("az");
    let script = SCRIPT
        .replace("__PORT__", &port.to_string())
        .replace("__PATH__", HELPER_PATH);
    // Write to a temp name and rename, so a concurrently running `az` never sees half a file.
    let tmp = dir.join(format!(".az.{}.tmp", std::process::id()));
    std::fs::write(&tmp, script).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    Ok(())
}

fn text(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    r
}

/// `GET /_testkit/az/get-access-token?scope=&resource=&tenant=`: the body is the script's
/// stdout (200) or stderr (otherwise).
pub(crate) async fn helper(State(shared): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Response {
    if !shared.az_logged_in.load(Ordering::SeqCst) {
        return text(StatusCode::UNAUTHORIZED, LOGIN_ERROR.to_owned());
    }
    let cfg = shared.config();
    let q = query_pairs(q.as_deref());
    let tenant = param(&q, "tenant").filter(|t| !t.is_empty());
    if shared.down.load(Ordering::SeqCst) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "ERROR: AADSTS90033: A transient error has occurred. Please try again.".to_owned(),
        );
    }
    if let Some(t) = tenant
        && !t.eq_ignore_ascii_case(&cfg.tenant_id)
    {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "ERROR: AADSTS90002: Tenant '{t}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    let scope = match (
        param(&q, "scope").filter(|s| !s.is_empty()),
        param(&q, "resource").filter(|s| !s.is_empty()),
    ) {
        (Some(s), _) => s.to_owned(),
        (None, Some(r)) => format!("{}/.default", r.trim_end_matches('/')),
        // az's default resource is ARM.
        (None, None) => "https://management.core.windows.net//.default".to_owned(),
    };
    let resource = resource_of_scope(&scope);
    let t = shared
        .issue(
            TokenSource::AzCli,
            &scope,
            &resource,
            None,
            &shared.sp_object_id,
        )
        .await;
    let expires_on_text = time::OffsetDateTime::from_unix_timestamp(t.expires_on as i64)
        .ok()
        .and_then(|d| {
            d.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].000000"
            ))
            .ok()
        })
        .unwrap_or_default();
    let s = super::s;
    let body = format!(
        "{{\n  \"accessToken\": {},\n  \"expiresOn\": {},\n  \"expires_on\": {},\n  \"subscription\": {},\n  \"tenant\": {},\n  \"tokenType\": \"Bearer\"\n}}",
        s(&t.token),
        s(&expires_on_text),
        t.expires_on,
        s(&cfg.subscription_id),
        s(&cfg.tenant_id),
    );
    text(StatusCode::OK, body)
}
