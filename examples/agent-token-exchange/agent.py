#!/usr/bin/env python3
"""An agent that acts for a person through stackpass's token exchange.

It trades the person's token (the subject) and its own token (the actor) for
short-lived credentials for one stack at stackpass's RFC 8693 endpoint, then
runs a command with them in its environment. Standard library only.

    STACKPASS_URL=https://stackpass.example.com \\
    PERSON_TOKEN=... AGENT_TOKEN=... \\
    python3 agent.py --stack pulumi:acme/payments/dev -- aws sts get-caller-identity

The credentials live only in the command's environment; nothing secret is
printed. The broker caps what the agent gets (its [[policy.agents]] bounds),
records the person and the agent, and refuses a revoked delegation.
"""

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
AWS_CREDENTIALS = "urn:stackpass:params:oauth:token-type:aws-credentials"


def exchange(server, person_token, agent_token, stack, duration):
    form = {
        "grant_type": GRANT,
        "subject_token": person_token,
        "subject_token_type": JWT,
        "actor_token": agent_token,
        "actor_token_type": JWT,
        "resource": stack,
        "requested_token_type": AWS_CREDENTIALS,
    }
    if duration:
        form["duration_seconds"] = str(duration)
    request = urllib.request.Request(
        server.rstrip("/") + "/oauth2/token",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            body = {}
        error = body.get("error", f"HTTP {e.code}")
        description = body.get("error_description", "")
        if error == "authorization_pending":
            hint = f"a person must approve access request {body.get('access_request_id')}; run again once approved"
        elif e.code == 429:
            hint = f"the agent's quota is used up; retry in {e.headers.get('Retry-After', '?')} s"
        else:
            hint = "see the broker's description above"
        sys.exit(f"error: {error}: {description}\nhint: {hint}")
    except urllib.error.URLError as e:
        sys.exit(f"error: could not reach {server}: {e.reason}\nhint: check STACKPASS_URL")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--duration", type=int, help="seconds (the agent's bounds cap it)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    missing = [name for name in ("STACKPASS_URL", "PERSON_TOKEN", "AGENT_TOKEN") if not os.environ.get(name)]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not set\nhint: see examples/agent-token-exchange/README.md")

    answer = exchange(
        os.environ["STACKPASS_URL"], os.environ["PERSON_TOKEN"], os.environ["AGENT_TOKEN"], args.stack, args.duration
    )
    # For AWS, access_token is the credential_process document.
    credentials = json.loads(answer["access_token"])
    info = answer.get("stackpass", {})
    print(
        f"agent: {info.get('actor')} acting for {info.get('requester')} as {info.get('role')} "
        f"until {credentials['Expiration']} (issuance {info.get('issuance_id')})",
        file=sys.stderr,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PERSON_TOKEN", "AGENT_TOKEN", "AWS_PROFILE")}
    env.update(
        AWS_ACCESS_KEY_ID=credentials["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=credentials["SecretAccessKey"],
        AWS_SESSION_TOKEN=credentials["SessionToken"],
    )
    sys.exit(subprocess.call(command, env=env))


if __name__ == "__main__":
    main()
