"""An MCP client built on the official MCP Python SDK (`mcp` from PyPI), run by
tests/integration/mcp.rs against the real broker. It does what an agent's MCP
host does: finds the protected-resource metadata from the 401's
WWW-Authenticate, then connects over streamable HTTP with a token for the
resource and calls every tool. It prints one JSON object of what it saw; the
Rust test asserts on it.

Environment: MCP_URL, MCP_TOKEN (aud = the MCP resource), MCP_WRONG_TOKEN
(a token for another audience).
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp import ClientSession
from mcp.client.auth.utils import extract_field_from_www_auth, extract_resource_metadata_from_www_auth
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import ProtectedResourceMetadata

URL = os.environ["MCP_URL"]
TOKEN = os.environ["MCP_TOKEN"]
WRONG_TOKEN = os.environ["MCP_WRONG_TOKEN"]

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "stackpass-test", "version": "1"},
    },
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def result_view(result):
    """What a tool call returned, as plain JSON."""
    return {
        "is_error": bool(result.is_error),
        "structured": result.structured_content,
        "meta": result.meta,
        "content": [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content],
    }


async def discover(client):
    """RFC 9728 discovery, as the SDK's OAuth flow starts it."""
    anonymous = await client.post(URL, json=INITIALIZE, headers=HEADERS)
    metadata_url = extract_resource_metadata_from_www_auth(anonymous)
    metadata = await client.get(metadata_url)
    parsed = ProtectedResourceMetadata.model_validate_json(metadata.content)
    wrong = await client.post(URL, json=INITIALIZE, headers={**HEADERS, "Authorization": f"Bearer {WRONG_TOKEN}"})
    return {
        "anonymous_status": anonymous.status_code,
        "anonymous_www_authenticate": anonymous.headers.get("WWW-Authenticate"),
        "metadata_url": metadata_url,
        "metadata": parsed.model_dump(mode="json", exclude_none=True),
        "wrong_audience_status": wrong.status_code,
        "wrong_audience_error": extract_field_from_www_auth(wrong, "error"),
        "wrong_audience_metadata": extract_resource_metadata_from_www_auth(wrong),
    }


async def session_with(token, calls):
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(URL, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                initialized = await session.initialize()
                tools = await session.list_tools()
                seen = {
                    "server": initialized.server_info.name,
                    "protocol_version": initialized.protocol_version,
                    "tools": {tool.name: tool.input_schema for tool in tools.tools},
                }
                for name, (tool, arguments) in calls.items():
                    seen[name] = result_view(await session.call_tool(tool, arguments))
                return seen


async def main():
    async with httpx2.AsyncClient(timeout=30) as client:
        report = {"discovery": await discover(client)}
    try:
        await asyncio.wait_for(session_with(WRONG_TOKEN, {}), timeout=30)
        report["wrong_audience_session"] = "connected"
    except BaseException as error:  # the SDK raises an exception group on 401
        report["wrong_audience_session"] = f"refused: {type(error).__name__}"
    report["session"] = await asyncio.wait_for(
        session_with(
            TOKEN,
            {
                "list": ("list_stacks", {"stacks": ["pulumi:acme/payments/dev", "terraform:acme/search-dev", "pulumi:acme/nowhere/dev"]}),
                "list_empty": ("list_stacks", {"stacks": []}),
                "explain": ("explain_decision", {"stack": "pulumi:acme/payments/dev", "provider": "aws", "duration_seconds": 900}),
                "explain_prod": ("explain_decision", {"stack": "pulumi:acme/payments/prod", "provider": "aws"}),
                "request": ("request_access", {"stack": "pulumi:acme/payments/prod", "provider": "aws", "duration_seconds": 900, "reason": "deploy the hotfix"}),
                "denied": ("get_credentials", {"stack": "terraform:acme/search-dev", "provider": "aws"}),
                "bad_arguments": ("get_credentials", {"stack": "pulumi:acme/payments/dev", "provider": "aws", "break_glass": {"reason": "x"}}),
                "credentials": ("get_credentials", {"stack": "pulumi:acme/payments/dev", "provider": "aws", "duration_seconds": 900, "reason": "mcp test"}),
            },
        ),
        timeout=60,
    )
    json.dump(report, sys.stdout)


asyncio.run(main())
