"""How hnsel holds its gRPC connection to Milvus, so long jobs and busy machines keep it (issue 24).

- Keepalive pings every gRPC server accepts. pymilvus pings every 10 s, idle or not; a server built on gRPC's
  defaults (Milvus Lite's in-process Python server, ``milvus-lite server``) allows one ping per 5 minutes while
  calls run and none while idle, and after two strikes answers GOAWAY ``too_many_pings``, dropping the connection
  under a long ``hnsel simulate``. hnsel pings after 6 minutes without traffic and never while idle; a Milvus
  server (which allows pings every 5 s) is served the same way.
- A request that can be sent twice (reads, upserts and deletes by id) and meets a dropped connection is sent once
  more on a fresh connection of the store's own.
- Opening a connection waits for the server: a refused or unready start (a Lite server starting on a loaded
  machine, a connection still backing off after a drop) is retried until the connect deadline, not reported at
  the first refusal (pymilvus's handshake does not wait for a channel to become ready).
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

__all__ = ["GRPC_OPTIONS", "TRANSIENT_SIGNS", "IDEMPOTENT", "is_transient", "is_dropped", "until_connected"]

T = TypeVar("T")

GRPC_OPTIONS: dict[str, int] = {
    # above the 5-minute minimum interval gRPC servers enforce by default (grpc.http2.min_recv_ping_interval_without_data_ms)
    "grpc.keepalive_time_ms": 360_000,
    "grpc.keepalive_timeout_ms": 20_000,
    # a default gRPC server counts every ping on a connection without calls as a strike (2 allowed, then GOAWAY)
    "grpc.keepalive_permit_without_calls": 0,
}

# what pymilvus and gRPC say when a connection was dropped or could not be made, as opposed to a refused request
DROPPED_SIGNS = ("UNAVAILABLE", "Fail connecting to server", "Connection refused", "Connection reset", "Socket closed",
                 "GOAWAY", "too_many_pings", "failed to connect to all addresses")
TRANSIENT_SIGNS = (*DROPPED_SIGNS, "DEADLINE_EXCEEDED", "Deadline Exceeded")  # while connecting, a slow start too
# requests that may be sent twice with the same effect (upsert and delete by id included): retried on a fresh connection
IDEMPOTENT = frozenset({"has_collection", "describe_collection", "load_collection", "query", "search", "get", "upsert", "delete"})


def _text(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    name = getattr(code() if callable(code) else code, "name", "")
    return f"{name} {getattr(exc, 'message', '') or ''} {exc}"


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says a connection could not be made yet (try again) rather than that Milvus refused it."""
    return any(sign in _text(exc) for sign in TRANSIENT_SIGNS)


def is_dropped(exc: BaseException) -> bool:
    """Whether a request failed because its connection dropped (a slow answer, DEADLINE_EXCEEDED, is not retried)."""
    return any(sign in _text(exc) for sign in DROPPED_SIGNS)


def until_connected(open_client: Callable[[float], T], deadline_s: float, *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], Any] = time.sleep) -> T:
    """``open_client(seconds_left)`` until it succeeds or ``deadline_s`` has passed; only transient failures are retried
    (waits of 0.25 s doubling to 4 s), the last one is raised."""
    end = clock() + deadline_s
    pause = 0.25
    while True:
        left = end - clock()
        try:
            return open_client(max(left, 1.0))
        except Exception as exc:  # pymilvus raises several types for the same failure
            if not is_transient(exc) or clock() + pause >= end:
                raise
        sleep(pause)
        pause = min(pause * 2, 4.0)
