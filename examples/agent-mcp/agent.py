"""A tiny agent that gets cloud credentials from stackpass over MCP and runs
one command with them, using the official MCP Python SDK.

    STACKPASS_MCP_URL=https://stackpass.example.com/mcp \
    STACKPASS_MCP_TOKEN_FILE=~/.stackpass-mcp-token \
    python agent.py --stack pulumi:acme/payments/dev -- aws sts get-caller-identity

The token must be one your identity provider minted for the MCP resource (its
`aud` is the URL above); without one, the agent prints where to get it, read
from the broker's RFC 9728 metadata. The credentials go into the command's
environment only: never printed, logged or written to disk.
"""

import argparse
import asyncio
import os
import subprocess
import sys

import httpx2
from mcp import ClientSession
from mcp.client.auth.utils import extract_resource_metadata_from_www_auth
from mcp.client.streamable_http import streamable_http_client

SECRET = "stackpass/secret"
# How each provider's credential fields reach a command (AWS; GCP and Azure
# credentials come as an access token the command's SDK reads from a file or
# variable of its own, and are left out of this small example).
AWS_ENV = {
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}


def read_token():
    path = os.environ.get("STACKPASS_MCP_TOKEN_FILE")
    if path:
        with open(os.path.expanduser(path)) as f:
            return f.read().strip()
    return os.environ.get("STACKPASS_MCP_TOKEN", "")


async def where_to_sign_in(url):
    """What the broker's 401 and metadata say about getting a token."""
    async with httpx2.AsyncClient(timeout=10) as client:
        response = await client.post(url, json={}, headers={"Accept": "application/json, text/event-stream"})
        metadata_url = extract_resource_metadata_from_www_auth(response)
        if not metadata_url:
            return f"{url} did not name its metadata (status {response.status_code})"
        metadata = (await client.get(metadata_url)).json()
        servers = ", ".join(metadata.get("authorization_servers", []))
        return f"get a token whose audience is {metadata['resource']} from: {servers}"


def text_of(result):
    return " ".join(block.text for block in result.content if getattr(block, "text", None))


async def credentials(url, token, stack, provider, duration, reason):
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                arguments = {"stack": stack, "provider": provider, "duration_seconds": duration}
                explained = await session.call_tool("explain_decision", arguments)
                print(f"stackpass: {text_of(explained)}", file=sys.stderr)
                if explained.is_error or (explained.structured_content or {}).get("decision") != "allow":
                    return None
                issued = await session.call_tool("get_credentials", {**arguments, "reason": reason})
                if issued.is_error:
                    print(f"stackpass: {text_of(issued)}", file=sys.stderr)
                    return None
                if not (issued.meta or {}).get(SECRET):
                    raise SystemExit("stackpass: the result was not marked secret; refusing to use it")
                # Print only the summary block: the others hold the secrets.
                print(f"stackpass: {issued.content[0].text.split('. The values')[0]}", file=sys.stderr)
                return issued.structured_content


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("STACKPASS_MCP_URL"), help="the broker's MCP URL")
    parser.add_argument("--stack", required=True)
    parser.add_argument("--provider", default="aws", choices=["aws"])
    parser.add_argument("--duration", type=int, default=900)
    parser.add_argument("--reason", default="run by the example MCP agent")
    parser.add_argument("command", nargs="+", help="the command to run with the credentials (after --)")
    args = parser.parse_args()
    if not args.url:
        raise SystemExit("set STACKPASS_MCP_URL or --url to the broker's MCP URL (https://…/mcp)")
    token = read_token()
    if not token:
        hint = asyncio.run(where_to_sign_in(args.url))
        raise SystemExit(f"no token: set STACKPASS_MCP_TOKEN_FILE; {hint}")
    issued = asyncio.run(credentials(args.url, token, args.stack, args.provider, args.duration, args.reason))
    if issued is None:
        return 1
    env = dict(os.environ)
    env.pop("AWS_PROFILE", None)
    for field, variable in AWS_ENV.items():
        env[variable] = issued["credentials"][field]
    return subprocess.run(args.command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
