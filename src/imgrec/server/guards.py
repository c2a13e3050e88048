"""What a request must pass before a route sees it, and how a refusal is said.

`RequestGuard` (ASGI middleware, outside the routes) answers in this order:
  400  a Host this server does not serve (DNS rebinding: a page elsewhere reading the API)
  403  a state-changing request from another site (Origin / Sec-Fetch-Site)
  503  more requests in progress than the limit: rejected at once, never queued for ever
  413  a body over the upload cap: on its Content-Length before any of it is read, or as it
       streams past; the rest is read and dropped (up to LINGER_BYTES) before the
       connection closes, so a client that sends its whole body first still reads its 413
  408  a body that stalls BODY_TIMEOUT_S between reads, or takes over BODY_TIME_S in all
  503  a request still in progress when a shutdown's grace period ends
and a client that leaves mid-request is one line, not a traceback. Idle connections are
not requests: they do not count against the limit, and `protocol` times them out.
`token_check` is the routes' dependency for the token.
"""

import asyncio
import ipaddress
import json
import secrets
import socket
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect

from imgrec.server import events
from imgrec.server.config import is_loopback

BODY_TIMEOUT_S = 10.0  # between two reads of a body: nginx's client_body_timeout
BODY_TIME_S = 60.0  # a whole body: the 20 MB cap at 350 KB/s
LINGER_S = 5.0  # reading and dropping a refused body: at most this between reads ...
LINGER_BYTES = 64 * 2**20  # ... and this much in all; past either the connection closes
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class HostRule:
    """The Host names a server answers to: the name or address it is bound to, the
    loopback names when it listens there, `--allowed-hosts` (`*`: any); bound to every
    address, also this machine's names and any IP address (DNS rebinding needs a name)."""

    def __init__(self, bound: str, allowed: tuple[str, ...] = ()):
        self.any_address = bound in WILDCARDS
        self.names = {bound.strip("[]").lower()} | {name.lower() for name in allowed}
        if self.any_address or is_loopback(bound):
            self.names |= LOOPBACK_NAMES
        if self.any_address:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def allows(self, host: str) -> bool:
        if not host or "*" in self.names:  # HTTP/1.0 may send none: no browser does
            return True
        name = split_host(host)
        if name in self.names:
            return True
        if not self.any_address:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def split_host(host: str) -> str:
    """The name of a Host header without its port, lower case: `[::1]:8000` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def cross_site(headers: Headers) -> bool:
    """Whether a browser sent this from a page of another origin (curl and scripts send
    neither header: they are no one's confused deputy)."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False
    parts = urlsplit(origin)
    return origin == "null" or parts.netloc.lower() != headers.get("host", "").lower()


class _Refused(Exception):
    """Raised out of a route's `receive` to refuse the request's body."""

    def __init__(self, event: str, status: int, detail: str):
        super().__init__(detail)
        self.event, self.status, self.detail = event, status, detail


def json_message(status: int, detail: str, headers: dict[str, str] | None = None):
    """An error's ASGI response start and body: JSON with a one-sentence `detail`."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http.response.start", "status": status, "headers": raw}, body


class RequestGuard:
    def __init__(self, app, *, max_bytes: int, hosts: HostRule, limit_concurrency: int):
        self.app = app
        self.max_bytes = max_bytes
        self.hosts = hosts
        self.limit = limit_concurrency
        self.in_progress = 0

    def too_large(self) -> _Refused:
        return _Refused("too_large", 413, f"the upload is over the {self.max_bytes / 2**20:g} "
                        "MB limit.")  # fmt: skip

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        client = scope.get("client")
        if not self.hosts.allows(headers.get("host", "")):
            events.record("bad_host", client, f"Host {headers['host']!r} refused")
            return await refuse(send, 400, "this server does not serve that Host; see "
                                "--allowed-hosts.")  # fmt: skip
        if scope["method"] not in SAFE_METHODS and cross_site(headers):
            events.record("cross_site", client, f"{scope['method']} from another site refused")
            return await refuse(send, 403, "a request from another site may not change "
                                "anything here.")  # fmt: skip
        if self.in_progress >= self.limit:
            events.record("busy", client, f"over {self.limit} requests in progress")
            return await refuse(send, 503, f"the server is answering {self.limit} requests "
                                "already; retry in a moment.", {"Retry-After": "1"})  # fmt: skip
        self.in_progress += 1
        try:
            await self.guarded(scope, receive, send, headers, client)
        finally:
            self.in_progress -= 1

    async def guarded(self, scope, receive, send, headers: Headers, client) -> None:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            refused = self.too_large()
            events.record(refused.event, client, f"a body of {int(length)} bytes refused")
            # A client waiting for `100 Continue` sends no body: nothing to read first.
            linger = headers.get("expect", "").lower() != "100-continue"
            return await refuse(send, 413, refused.detail, linger=receive if linger else None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BODY_TIME_S
        received, body_done, started = 0, False, False

        async def guarded_receive():
            nonlocal received, body_done
            if body_done:  # after the body: Starlette waiting for a disconnect, untimed
                return await receive()
            wait = min(BODY_TIMEOUT_S, deadline - loop.time())
            try:
                async with asyncio.timeout(max(wait, 0)):
                    message = await receive()
            except TimeoutError:
                raise _Refused("body_timeout", 408, "the request body stalled; send it "
                               "faster or smaller.") from None  # fmt: skip
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise self.too_large()
            return message

        async def tracked_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except _Refused as refused:
            events.record(refused.event, client, refused.detail.rstrip("."))
            if not started:
                await refuse(send, refused.status, refused.detail,
                             linger=receive if refused.status == 413 else None)  # fmt: skip
        except ClientDisconnect:
            events.record("disconnected", client, f"left during {scope['method']} "
                          f"{scope['path']}")  # fmt: skip
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when a shutdown's grace period ends:
            # the process is stopping, so one line (and a last word) instead of a traceback.
            events.record("shutdown", client, f"{scope['method']} {scope['path']} cut short")
            # Not raised on: uvicorn logs a cancel that leaves the app as "Exception in ASGI
            # application" with its traceback, and only waits for the task to end.
            if not started:
                await refuse(send, 503, "the server is shutting down; retry in a moment.")


async def refuse(send, status: int, detail: str, headers: dict | None = None, linger=None):
    """Answer an error as JSON and close the connection; with `linger` (the request's
    receive), read and drop what is left of its body first, within LINGER_S and
    LINGER_BYTES: closing on unread bytes resets the connection, and a client still
    sending (urllib, http.client: no `Expect: 100-continue`) would never see the answer."""
    start, body = json_message(status, detail, {**(headers or {}), "Connection": "close"})
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": linger is not None})
    if linger is None:
        return
    dropped = 0
    try:
        while dropped <= LINGER_BYTES:
            async with asyncio.timeout(LINGER_S):
                message = await linger()
            dropped += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
    except TimeoutError:
        pass
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def token_check(token: str):
    """A dependency that lets a request through only with `Authorization: Bearer TOKEN`."""
    bearer = HTTPBearer(
        auto_error=False, description="the server's token (IMGREC_TOKEN or --token)"
    )

    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, token.encode()):  # in constant time
            raise HTTPException(
                401,
                "this server needs its token: send `Authorization: Bearer TOKEN`.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
