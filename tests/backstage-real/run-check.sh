#!/usr/bin/env bash
# Starts a real Backstage backend (index.js) on 127.0.0.1, signs jane in through
# the guest provider, records discovery, JWKS, the user token and catalog
# responses into observed/, and checks stackpass's assumptions (probe.js). Then,
# when a stackpass binary and moto are there, has the real broker verify jane's
# real token and read the real catalog (see "stackpass step" below).
# With the broker there, the backend also runs the scaffolder plugin with
# stackpass's scaffolder module (backstage/plugin-scaffolder-backend-module-stackpass,
# built here), and scaffolder.js has jane run tasks through it.
# Exits non-zero if anything fails. Logs go next to this script (git-ignored):
# npm-ci.log, module-npm-ci.log, module-test.log, backend.log, moto.log,
# stackpass.log.
#
# Env (all optional): PORT (default: a free port), BACKSTAGE_STATIC_TOKEN
# (default: random), READY_TIMEOUT_SECONDS (default 120), NPM_CI_TIMEOUT_SECONDS
# (default 600), STACKPASS (default ../../target/debug/stackpass),
# SKIP_STACKPASS=1, REQUIRE_STACKPASS=1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

log() { printf '[backstage-real] %s\n' "$*" >&2; }

command -v node >/dev/null || { log "node is not installed"; exit 1; }
command -v curl >/dev/null || { log "curl is not installed"; exit 1; }
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  log "node >= 20 is required, found $(node -v)"
  exit 1
fi

# better-sqlite3 has no prebuilt binary reachable here (its prebuild-install
# downloads from GitHub), so npm compiles it with node-gyp. node-gyp would
# download Node's headers too, unless pointed at the ones Debian's nodejs ships.
if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node.h ]; then
  export npm_config_nodedir=/usr
fi

sqlite_loads() { node -e 'new (require("better-sqlite3"))(":memory:").close()' 2>/dev/null; }

t0=$(date +%s)
if [ ! -f node_modules/.package-lock.json ] ||
  [ package-lock.json -nt node_modules/.package-lock.json ] ||
  ! sqlite_loads; then
  log "installing dependencies (npm ci, log in npm-ci.log)"
  if ! timeout "${NPM_CI_TIMEOUT_SECONDS:-600}" npm ci --no-audit --no-fund >npm-ci.log 2>&1; then
    log "npm ci failed; last lines of npm-ci.log:"
    tail -n 30 npm-ci.log >&2
    exit 1
  fi
  if ! sqlite_loads; then
    log "better-sqlite3 does not load after npm ci (native build failed?); see npm-ci.log"
    tail -n 30 npm-ci.log >&2
    exit 1
  fi
fi
t1=$(date +%s)
log "dependencies ready in $((t1 - t0))s"

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
port="${PORT:-$(free_port)}"
token="${BACKSTAGE_STATIC_TOKEN:-$(node -p 'require("crypto").randomBytes(24).toString("base64url")')}"

work="$(mktemp -d)"
pids=()
stop() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
  for pid in "${pids[@]}"; do stop "$pid"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_http URL NAME PID: up to 30 s, giving up early if PID has exited.
wait_http() {
  for _ in $(seq 1 150); do
    curl -sf -o /dev/null --max-time 2 "$1" && return 0
    kill -0 "$3" 2>/dev/null || { log "$2 exited before answering at $1"; return 1; }
    sleep 0.2
  done
  log "$2 did not answer at $1 within 30s"
  return 1
}

# Whether the stackpass step runs is known before the backend starts: the
# scaffolder plugin needs the broker's URL in its config.
stackpass="${STACKPASS:-$root/target/debug/stackpass}"
moto="$root/.venv/bin/moto_server"
with_stackpass=0
if [ "${SKIP_STACKPASS:-0}" != 1 ]; then
  if [ -x "$stackpass" ] && [ -x "$moto" ]; then
    with_stackpass=1
  elif [ "${REQUIRE_STACKPASS:-0}" = 1 ]; then
    log "FAIL: REQUIRE_STACKPASS=1 but $stackpass or $moto is missing"
    exit 1
  else
    log "skipping the stackpass step: no $stackpass or no $moto (scripts/setup-test-deps makes it)"
  fi
fi
moto_port="$(free_port)"
broker_port="$(free_port)"
module_dir="$root/backstage/plugin-scaffolder-backend-module-stackpass"
scaffolder_env=()
if [ "$with_stackpass" = 1 ]; then
  t_mod=$(date +%s)
  if [ ! -f "$module_dir/node_modules/.package-lock.json" ] ||
    [ "$module_dir/package-lock.json" -nt "$module_dir/node_modules/.package-lock.json" ]; then
    log "installing the scaffolder module's dependencies (log in module-npm-ci.log)"
    if ! (cd "$module_dir" && timeout "${NPM_CI_TIMEOUT_SECONDS:-600}" npm ci --no-audit --no-fund) >module-npm-ci.log 2>&1; then
      log "npm ci in $module_dir failed; last lines of module-npm-ci.log:"
      tail -n 30 module-npm-ci.log >&2
      exit 1
    fi
  fi
  # `npm test` compiles dist/ (which index.js loads) and runs the module's own
  # tests (node --test).
  if ! (cd "$module_dir" && npm test) >module-test.log 2>&1; then
    log "the scaffolder module's build or tests failed; last lines of module-test.log:"
    tail -n 40 module-test.log >&2
    exit 1
  fi
  log "scaffolder module built and its tests passed ($(grep -E '^# (pass|fail) ' module-test.log | tr '\n' ' ')) in $(($(date +%s) - t_mod))s"
  scaffolder_env=(STACKPASS_URL="http://127.0.0.1:$broker_port" STACKPASS_SCAFFOLDER_MODULE="$module_dir")
fi

log "starting the backend on 127.0.0.1:$port (log in backend.log)"
env PORT="$port" BACKSTAGE_STATIC_TOKEN="$token" NODE_ENV=production "${scaffolder_env[@]}" \
  node index.js >backend.log 2>&1 &
backend_pid=$!
pids+=("$backend_pid")

status=0
BACKSTAGE_URL="http://127.0.0.1:$port" BACKSTAGE_STATIC_TOKEN="$token" \
  BACKEND_PID="$backend_pid" USER_TOKEN_FILE="$work/jane.token" \
  timeout "$((${READY_TIMEOUT_SECONDS:-120} + 120))" node probe.js || status=$?
t2=$(date +%s)

if ! kill -0 "$backend_pid" 2>/dev/null; then
  log "the backend exited early; last lines of backend.log:"
  tail -n 20 backend.log | cut -c1-500 >&2
  status=1
elif [ "$status" -ne 0 ]; then
  log "FAILED (exit $status); last lines of backend.log:"
  tail -n 20 backend.log | cut -c1-500 >&2
fi

# The stackpass step: the real broker binary against this real Backstage. Its
# Backstage issuer finds the keys through discovery + JWKS and verifies jane's
# token; its Backstage catalog reads ownedBy/memberOf with the static token; moto
# stands in for AWS STS. jane must get credentials for payments (owned by her
# group) and a 403 for billing-api (owned by Team-Platform).
stackpass_check() {
  local moto_pid sp_pid out rc
  printf '%s' "$token" >"$work/catalog-token"
  cat >"$work/stacks.toml" <<TOML
[[stacks]]
ref = "pulumi:acme/payments/dev"
tags = { "backstage.io/component" = "payments", environment = "dev", aws-account = "111111111111" }

[[stacks]]
ref = "pulumi:acme/payments/prod"
tags = { "backstage.io/component" = "payments", environment = "prod", aws-account = "333333333333" }

[[stacks]]
ref = "pulumi:acme/billing-api/dev"
tags = { "backstage.io/component" = "billing-api", environment = "dev", aws-account = "222222222222" }
TOML
  cat >"$work/stackpass.toml" <<TOML
[server]
listen = "127.0.0.1:$broker_port"

[issuer]
signing_key = "signing-key.pem"
create_key_if_missing = true

[[identity.issuers]]
name = "backstage"
kind = "backstage"
url = "http://127.0.0.1:$port"

[catalog]
kind = "backstage"
url = "http://127.0.0.1:$port"
token_file = "catalog-token"

[stacks]
kind = "static"
file = "stacks.toml"

[providers.aws]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:$moto_port"

[[policy.rules]]
name = "owners-deploy-dev"
provider = "aws"
tags = { environment = ["dev"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-deployer"
max_duration = "1h"

[audit]
url = "sqlite://audit.db"
TOML
  log "stackpass step: moto on 127.0.0.1:$moto_port, broker on 127.0.0.1:$broker_port (moto.log, stackpass.log)"
  "$moto" -H 127.0.0.1 -p "$moto_port" >moto.log 2>&1 &
  moto_pid=$!
  pids+=("$moto_pid")
  wait_http "http://127.0.0.1:$moto_port/moto-api/" moto "$moto_pid" || return 1
  env -u STACKPASS_CONFIG -u STACKPASS_TOKEN -u STACKPASS_URL \
    "$stackpass" serve --config "$work/stackpass.toml" >stackpass.log 2>&1 &
  sp_pid=$!
  pids+=("$sp_pid")
  if ! wait_http "http://127.0.0.1:$broker_port/readyz" stackpass "$sp_pid"; then
    tail -n 20 stackpass.log >&2
    return 1
  fi

  rc=0
  out="$(env -u STACKPASS_TOKEN STACKPASS_URL="http://127.0.0.1:$broker_port" "$stackpass" creds \
    --stack pulumi:acme/payments/dev --token-file "$work/jane.token" --duration 15m --format json 2>&1)" || rc=$?
  printf '%s\n' "$out" |
    sed -E 's/("(secret_access_key|session_token)": *")[^"]*/\1<redacted>/g' >observed/stackpass-creds-jane-payments.txt
  if [ "$rc" -ne 0 ] || ! printf '%s' "$out" | grep -q 'role/payments-deployer'; then
    log "FAIL: stackpass did not issue credentials to jane for payments (exit $rc): $out"
    tail -n 20 stackpass.log >&2
    return 1
  fi
  log "ok: stackpass verified jane's Backstage token and issued credentials for payments"

  rc=0
  out="$(env -u STACKPASS_TOKEN STACKPASS_URL="http://127.0.0.1:$broker_port" "$stackpass" creds \
    --stack pulumi:acme/billing-api/dev --token-file "$work/jane.token" --format json 2>&1)" || rc=$?
  printf '%s\n' "$out" >observed/stackpass-creds-jane-billing-api.txt
  if [ "$rc" -eq 0 ] || ! printf '%s' "$out" | grep -q 'HTTP 403'; then
    log "FAIL: stackpass should have refused jane billing-api with a 403 (exit $rc): $out"
    tail -n 20 stackpass.log >&2
    return 1
  fi
  log "ok: stackpass refused jane for billing-api: $(printf '%s' "$out" | head -c 300)"

  # The scaffolder step: real scaffolder tasks, started with jane's token.
  if ! BACKSTAGE_URL="http://127.0.0.1:$port" USER_TOKEN_FILE="$work/jane.token" \
    AWS_CLI="$root/.venv/bin/aws" MOTO_URL="http://127.0.0.1:$moto_port" WORK_DIR="$work" \
    timeout "$((${READY_TIMEOUT_SECONDS:-120} * 2 + 60))" node scaffolder.js; then
    log "the scaffolder step failed; last lines of backend.log:"
    tail -n 30 backend.log | cut -c1-500 >&2
    return 1
  fi
  stop "$sp_pid"
  stop "$moto_pid"
}

if [ "$status" -eq 0 ] && [ "$with_stackpass" = 1 ]; then
  stackpass_check || status=1
fi
t3=$(date +%s)

log "install $((t1 - t0))s, backend + probe $((t2 - t1))s, stackpass step $((t3 - t2))s, total $((t3 - t0))s"
exit "$status"
