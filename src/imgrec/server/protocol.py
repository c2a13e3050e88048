"""uvicorn's HTTP/1.1 protocol (h11) with the timeout it lacks: a request head must arrive
whole within HEADER_TIMEOUT_S of the connection opening (or of its first byte, on a kept-
alive one). uvicorn times out only the idle gap after a response (timeout_keep_alive), so
a client that connects and sends nothing, or its headers a byte at a time, would hold its
connection for ever: nginx's client_header_timeout, here."""

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgrec.server import events

# Generous for any client on any network (a head is a few hundred bytes), short enough
# that a few hundred idle sockets recycle within seconds (docs/serving.md).
HEADER_TIMEOUT_S = 10.0


class GuardedH11Protocol(H11Protocol):
    head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self.head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # the first byte of a next request on a kept-alive one
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in (or the connection done)
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        events.record(
            "header_timeout", self.client, f"no whole request head in {HEADER_TIMEOUT_S:g} s"
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are no HTTP, as JSON like every other error."""
        body = json.dumps({"detail": "invalid HTTP request."}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):  # fmt: skip
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response had started: nothing more can be said
            pass
        self.transport.close()
