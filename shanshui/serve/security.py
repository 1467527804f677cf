"""Secure defaults: loopback binding unless a key guards the server, a constant-time key check, a body size cap."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json

from shanshui.errors import ShanshuiError

NO_KEY_OPT_OUT = "--insecure-no-api-key"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, api_key: str | None, insecure_no_api_key: bool) -> str | None:
    """Refuse a non-loopback address without a key (or the opt-out); returns a warning line to print, if any."""
    if is_loopback(host):
        return None
    if api_key:
        return f"warning: serving on {host}, reachable from other machines; requests need the API key (use TLS in front of it)"
    if not insecure_no_api_key:
        raise ShanshuiError(f"--host {host} is reachable from other machines: give --api-key KEY (or SHANSHUI_API_KEY), "
                            f"or {NO_KEY_OPT_OUT} to let anyone who can reach it paint")
    return (f"WARNING: {NO_KEY_OPT_OUT}: serving on {host} WITHOUT AN API KEY; anyone who can reach this address can "
            f"use this machine to paint")


def key_matches(authorization: str | None, x_api_key: str | None, api_key: str) -> bool:
    """`Authorization: Bearer KEY`, `Authorization: Basic base64(any-user:KEY)` (A1111's --api-auth) or
    `X-API-Key: KEY`; compared in constant time."""
    expected = api_key.encode("utf-8")
    offered: list[bytes] = []
    if x_api_key:
        offered.append(x_api_key.encode("utf-8"))
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip().encode("utf-8"))
        elif scheme.lower() == "basic":
            try:
                offered.append(base64.b64decode(value.strip(), validate=True).partition(b":")[2])
            except ValueError:
                pass
    ok = False
    for candidate in offered:
        ok |= hmac.compare_digest(candidate, expected)
    return ok


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before any route sees it (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(send)
            more = message.get("more_body", False)
        return await self.app(scope, _replay(chunks, receive), send)

    async def _too_large(self, send):
        body = json.dumps({"detail": f"request body larger than {self.max_bytes // 2**20} MiB; send a smaller image"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replayed():
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
