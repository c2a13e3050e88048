"""What clients did that the server refused or lost: one log line each, and a count that
/api/health reports (per worker process). Never a traceback: these are not bugs."""

import logging
from collections import Counter

log = logging.getLogger(__name__)

EVENTS = (
    "disconnected",  # the client left before its request was read or answered
    "header_timeout",  # a request head not in within HEADER_TIMEOUT_S (slow or idle)
    "body_timeout",  # a request body stalled BODY_TIMEOUT_S between reads, or ran past its time
    "busy",  # 503: more requests in progress than --limit-concurrency
    "too_large",  # 413: an upload over the cap, or pixels over the decode budget
    "bad_host",  # 400: a Host header this server does not serve
    "cross_site",  # 403: a state-changing request from another site
    "shutdown",  # 503: still in progress when a shutdown's grace period ran out
)
counts: Counter[str] = Counter(dict.fromkeys(EVENTS, 0))


def record(event: str, client: tuple | None, detail: str) -> None:
    """Count `event` and log it in one line, naming the client's address."""
    counts[event] += 1
    where = f"{client[0]}:{client[1]}" if client else "a client"
    log.warning("%s: %s (%s so far)", where, detail, counts[event])
