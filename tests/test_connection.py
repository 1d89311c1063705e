"""Connections that hold (issue 24): the keepalive every gRPC server accepts, and a connect that waits out refusals.

Under load, pymilvus's 10 s keepalive pings drew GOAWAY ``too_many_pings`` from Milvus Lite's in-process Python
server (gRPC's default policy: one ping per 5 minutes during calls, none while idle, two strikes), and the next
connect was refused at once ("cannot connect to Milvus at .../single.db"): tests/test_lake_ray.py on busy cores and
a long ``hnsel simulate``. benchmarks/soak_connection.py holds a connection for 20 minutes.
"""

from __future__ import annotations

import grpc
import pytest

from hnsel.config import StoreConfig
from hnsel.errors import StoreError
from hnsel.store import open_store
from hnsel.store.connection import GRPC_OPTIONS, is_transient, until_connected

GRPC_SERVER_MIN_PING_INTERVAL_MS = 300_000  # gRPC core's default grpc.http2.min_recv_ping_interval_without_data_ms


class _Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class _Refused(Exception):
    def __init__(self, message: str = "Fail connecting to server on 127.0.0.1:1, illegal connection params or server unavailable"):
        super().__init__(message)
        self.message = message


def test_the_channel_pymilvus_opens_for_a_store_pings_as_a_default_grpc_server_allows(lite_uri, monkeypatch):
    """The options that reach grpc.insecure_channel through pymilvus: no idle pings, none more often than every 5 min."""
    seen: list[dict] = []
    real = grpc.insecure_channel

    def recording(target, options=None, *args, **kwargs):
        seen.append(dict(options or []))
        return real(target, options, *args, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", recording)
    with open_store(StoreConfig(uri=lite_uri, namespace="t")) as store:
        assert not store.has("images")  # a request answered on that channel
    assert seen, "pymilvus opened no channel"
    for options in seen:
        assert options["grpc.keepalive_time_ms"] >= GRPC_SERVER_MIN_PING_INTERVAL_MS
        assert not options["grpc.keepalive_permit_without_calls"]
    assert GRPC_OPTIONS["grpc.keepalive_timeout_ms"] < GRPC_OPTIONS["grpc.keepalive_time_ms"]


@pytest.mark.parametrize("message, transient", [
    ("Fail connecting to server on 127.0.0.1:40349, illegal connection params or server unavailable", True),
    ('Received a GOAWAY with error code ENHANCE_YOUR_CALM and debug data equal to "too_many_pings"', True),
    ("<_InactiveRpcError of RPC that terminated with: status = StatusCode.UNAVAILABLE details = Socket closed>", True),
    ("Open local milvus failed", False),  # the file is held by another process: waiting does not help
    ("collection not found[collection=x]", False),
])
def test_is_transient_tells_a_dropped_connection_from_a_refusal(message, transient):
    assert is_transient(_Refused(message)) is transient


def test_until_connected_retries_refusals_with_growing_waits_until_it_connects():
    clock, calls = _Clock(), []

    def open_client(left):
        calls.append(left)
        if len(calls) < 4:
            raise _Refused()
        return "client"

    assert until_connected(open_client, 30.0, clock=clock, sleep=clock.sleep) == "client"
    assert clock.sleeps == [0.25, 0.5, 1.0] and calls[0] == 30.0 and calls[-1] == 30.0 - 1.75


def test_until_connected_gives_up_at_the_deadline_and_raises_other_errors_at_once():
    clock = _Clock()

    def refused(left):
        raise _Refused()

    with pytest.raises(_Refused):
        until_connected(refused, 10.0, clock=clock, sleep=clock.sleep)
    assert sum(clock.sleeps) <= 10.0 and max(clock.sleeps) == 4.0
    clock, calls = _Clock(), []

    def bad_token(left):
        calls.append(left)
        raise _Refused("auth failed: invalid token")

    with pytest.raises(_Refused, match="invalid token"):
        until_connected(bad_token, 10.0, clock=clock, sleep=clock.sleep)
    assert len(calls) == 1 and clock.sleeps == []


def test_a_store_opens_after_refusals_and_a_server_that_never_answers_is_one_line(lite_uri, monkeypatch):
    """Store's connect goes through until_connected: two refusals (a Lite server still starting, a connection still
    backing off after a drop) and then the store opens; a URI nothing listens on ends in one StoreError line."""
    import pymilvus

    real, attempts = pymilvus.MilvusClient, []

    def flaky(*args, **kwargs):
        attempts.append(kwargs)
        if len(attempts) <= 2:
            raise pymilvus.exceptions.MilvusException(code=2, message="Fail connecting to server on 127.0.0.1:1, illegal connection params or server unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(pymilvus, "MilvusClient", flaky)
    with open_store(StoreConfig(uri=lite_uri, namespace="t")) as store:
        assert not store.has("images")
    assert len(attempts) == 3 and all(a["grpc_options"] == GRPC_OPTIONS for a in attempts)
    monkeypatch.setattr(pymilvus, "MilvusClient", real)
    with pytest.raises(StoreError, match=r"^cannot connect to Milvus at http://127\.0\.0\.1:1\b") as info:
        open_store(StoreConfig(uri="http://127.0.0.1:1", namespace="t", timeout=3.0))
    assert "\n" not in str(info.value)


def _unavailable(*args, **kwargs):
    raise _Refused("<_InactiveRpcError: status = StatusCode.UNAVAILABLE, details = Received a GOAWAY with error code ENHANCE_YOUR_CALM>")


def test_a_read_that_meets_a_dropped_connection_is_sent_again_on_a_fresh_one(store_uri, namespace):
    """The first query fails as a dropped connection does; the store reconnects (a connection of its own) and the
    read answers. A request that is not idempotent, or one that timed out, is not sent twice."""
    with open_store(StoreConfig(uri=store_uri, namespace=namespace)) as store:
        store.set_meta("k", {"v": 1})
        first = store.client
        first.query = _unavailable
        assert store.get_meta("k") == {"v": 1} and store.client is not first
        store.client.create_collection = _unavailable
        with pytest.raises(StoreError, match="is unreachable"):
            store.rpc("create a collection", "create_collection", "x")
        calls = []

        def slow(*args, **kwargs):
            calls.append(1)
            raise _Refused("DEADLINE_EXCEEDED: Deadline Exceeded")

        store.client.query = slow
        with pytest.raises(StoreError, match="did not answer"):
            store.get_meta("k")
        assert calls == [1]
