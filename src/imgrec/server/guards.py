"""What a request must pass before a route sees it: the upload cap and the token."""

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers


class UploadLimit:
    """413 for a request body over `max_bytes`, before it is read whole: at once on its
    Content-Length, or, for a body without one (chunked), as soon as it streams past."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> HTTPException:
        # Closing the connection: otherwise uvicorn would read on, and drop, the rest.
        return HTTPException(
            413,
            f"the upload is over the {self.max_bytes / 2**20:g} MB limit.",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            error = self.too_large()
            response = JSONResponse({"detail": error.detail}, error.status_code, error.headers)
            return await response(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()  # in the route, which answers it as any HTTPException
            return message

        await self.app(scope, counted_receive, send)


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
