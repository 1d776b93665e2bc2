#!/usr/bin/env bash
# The README's quickstart, unattended: starts moto's STS and the broker, issues
# credentials to an owner (and uses them through the AWS CLI), is refused for a
# non-owner, shows the audit rows, and stops what it started. Exits non-zero as
# soon as any step does not behave as the README says.
#
#   examples/quickstart/demo.sh            # builds stackpass with cargo first
#   STACKPASS=/path/to/stackpass examples/quickstart/demo.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
config="$here/stackpass.toml"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nDEMO FAILED: %s\n' "$*" >&2; exit 1; }

if [ -z "${STACKPASS:-}" ]; then
  step "Building stackpass"
  cargo build --quiet --manifest-path "$root/Cargo.toml"
  STACKPASS="$root/target/debug/stackpass"
fi
"$root/scripts/setup-test-deps"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
broker_port=$(free_port)
moto_port=$(free_port)
# The quickstart config names ports 8080 and 5000; the demo takes free ones so it
# never collides with a broker you already run, by overriding config through env.
export STACKPASS_SERVER__LISTEN="127.0.0.1:$broker_port"
export STACKPASS_PROVIDERS__AWS__ENDPOINT_URL="http://127.0.0.1:$moto_port"
export STACKPASS_URL="http://127.0.0.1:$broker_port"
unset STACKPASS_TOKEN STACKPASS_CONFIG STACKPASS_STACK

logs=$(mktemp -d)
# A credential cache of this run's own, so a cache from an earlier run (or yours)
# never answers for this broker.
export STACKPASS_CACHE_DIR="$logs/cache"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT

wait_for() {
  local url=$1 name=$2
  for _ in $(seq 1 150); do
    if curl -sf -o /dev/null "$url"; then return 0; fi
    sleep 0.2
  done
  echo "--- $name log ---" >&2
  cat "$logs/$name.log" >&2 || true
  fail "$name did not come up at $url"
}

step "Starting moto's STS emulator on 127.0.0.1:$moto_port"
"$root/.venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$logs/moto.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$moto_port/moto-api/" moto

step "Starting the broker on 127.0.0.1:$broker_port"
"$STACKPASS" serve --config "$config" >"$logs/broker.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$broker_port/readyz" broker
grep -m1 "listening on" "$logs/broker.log"

# The audit database persists across runs; remember where this run starts.
audit_rows_before=$("$STACKPASS" audit list --config "$config" --limit 1000000 | wc -l)

step "jane (team-payments) asks for credentials for pulumi:acme/payments/dev"
jane=$("$STACKPASS" dev token --user user:default/jane --config "$config")
issued=$(STACKPASS_TOKEN=$jane "$STACKPASS" creds --stack pulumi:acme/payments/dev --duration 15m --format json) \
  || fail "jane should have received credentials"
python3 - "$issued" <<'PY' || fail "the issuance response is not what the README shows"
import json, sys
body = json.loads(sys.argv[1])
assert body["role"] == "arn:aws:iam::111111111111:role/payments-deployer", body
assert body["credentials"]["access_key_id"].startswith("ASIA"), body
print(f"issued {body['credentials']['access_key_id']} for {body['role']} until {body['expires_at']} (issuance {body['issuance_id']})")
PY

step "The AWS CLI uses stackpass as its credential_process"
aws_dir=$(mktemp -d -p "$logs")
cat >"$aws_dir/config" <<CFG
[profile payments-dev]
region = us-east-1
credential_process = $STACKPASS creds --stack pulumi:acme/payments/dev --format credential-process
CFG
identity=$(STACKPASS_TOKEN=$jane AWS_CONFIG_FILE="$aws_dir/config" AWS_SHARED_CREDENTIALS_FILE="$aws_dir/none" \
  "$root/.venv/bin/aws" sts get-caller-identity --profile payments-dev --endpoint-url "http://127.0.0.1:$moto_port" --output json) \
  || fail "aws sts get-caller-identity failed"
echo "$identity"
echo "$identity" | grep -q 'assumed-role/payments-deployer/user.default.jane' || fail "unexpected caller identity"

step "bob (team-search) asks for the same stack and is refused"
bob=$("$STACKPASS" dev token --user user:default/bob --config "$config")
if STACKPASS_TOKEN=$bob "$STACKPASS" creds --stack pulumi:acme/payments/dev 2>"$logs/bob.err"; then
  fail "bob must not receive credentials for a stack his team does not own"
fi
cat "$logs/bob.err"
grep -q "Denied by policy (HTTP 403)" "$logs/bob.err" || fail "bob's refusal should be a policy denial"
grep -q "no rule grants aws credentials for pulumi:acme/payments/dev to user:default/bob" "$logs/bob.err" || fail "the denial should say what was refused"
grep -q "is not a member of group:default/team-payments" "$logs/bob.err" && fail "bob owns nothing here: the reasons (tags, owners) are for the owners, auditors and the audit log"

step "jane runs a command with stackpass run: it fetches its own credentials, renewed while it runs"
ran=$(STACKPASS_TOKEN=$jane PATH="$root/.venv/bin:$PATH" AWS_REGION=us-east-1 \
  "$STACKPASS" run --stack pulumi:acme/payments/dev -- \
  aws sts get-caller-identity --endpoint-url "http://127.0.0.1:$moto_port" --query Arn --output text) \
  || fail "stackpass run failed"
echo "$ran"
echo "$ran" | grep -q 'assumed-role/payments-deployer/user.default.jane' || fail "the command did not act as jane's deployer role"

step "The audit log: every decision and issuance of this run"
rows=$("$STACKPASS" audit list --config "$config" --limit 1000000 | tail -n +"$((audit_rows_before + 1))")
python3 - "$rows" "$issued" <<'PY' || fail "the audit rows are not what the README shows"
import json, sys
rows = [json.loads(line) for line in sys.argv[1].splitlines()]
issued = json.loads(sys.argv[2])
got = [(r["requester"], r["event"], r["outcome"]) for r in rows]
jane = [("user:default/jane", "decision", "allowed"), ("user:default/jane", "issuance_intent", "pending"), ("user:default/jane", "issuance_outcome", "issued")]
bob = [("user:default/bob", "decision", "denied")]
# jane's own request, then the AWS CLI's (however often it runs credential_process,
# the cache answers after the first), then bob, then `run`'s dry run: its
# credential came from the cache too.
run = [("user:default/jane", "dry_run", "would_allow")]
assert got == jane * 2 + bob + run, got
assert rows[2]["credential_id"] == issued["credentials"]["access_key_id"], rows[2]
assert all(r["issuance_id"] == issued["issuance_id"] for r in rows[:3]), rows[:3]
for r in rows:
    print(f'{r["recorded_at"][:23]}  {r["requester"]:<18} {r["event"]:<17} {r["outcome"]:<8} {r["stack"]}  {r["credential_id"] or ""}')
PY

step "Demo passed"
