"""Who holds an unfinished round or import, whether that process still lives, and claiming a round number.

Milvus has no transactions and no compare-and-set, so a number is claimed in three steps: write a claim record
under a key no one else uses (``claim/0004/<random>``), read every claim for that number with Strong consistency
(a Strong read sees every write that finished before it started, from any process), and win only when the own
claim is the only one and no round log holds the number yet. Of two overlapping claimants the one that reads
second sees both claims, so two can never both win; both may lose, and then each tries the next number after a
random pause. The winner writes its record (``round/0004``) before deleting its claim, so a later claimant of
the same number sees it taken.

A holder's record names its host and process id and carries a ``heartbeat`` (Unix seconds) that a thread
refreshes every ``HEARTBEAT_S`` seconds. The record of a process that is gone from this host, or whose heartbeat
is older than ``LEASE_S``, belongs to a dead process: its work is finished or rolled back by ``repair``.

``row_lock`` is a mutex built the same way (one claim under ``claim/rows/``, the only one a Strong read finds): every
read-modify-write of stored rows (``Store.update``, which marks a round; ``Store.upsert`` of rows already stored,
which keeps their round) holds it, so an ingest never writes back a round a concurrent select has just changed.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..errors import StoreError
from ..schema import CLAIM_PREFIX
from .milvus import Store

__all__ = ["HEARTBEAT_S", "LEASE_S", "CLAIM_PREFIX", "ROWS_CLAIM_PREFIX", "owner", "is_dead", "describe_owner", "Lease", "claim_number",
           "row_lock", "holds_row_lock"]

HEARTBEAT_S = 10.0
LEASE_S = 90.0  # a heartbeat this old means the holder stopped (it refreshes every HEARTBEAT_S)
CLAIM_ATTEMPTS = 12
ROWS_CLAIM_PREFIX = f"{CLAIM_PREFIX}rows/"  # never a number's claim prefix (claim/0004/)


def owner() -> dict[str, Any]:
    """This process, as recorded in a lease: host, process id, heartbeat."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def is_dead(record: dict[str, Any] | None, now: float | None = None) -> bool:
    """True when the process that wrote ``record`` (a lease or a claim) has stopped, or never said who it was."""
    holder = (record or {}).get("owner")
    if not isinstance(holder, dict):
        return True
    now = time.time() if now is None else now
    if now - float(holder.get("heartbeat", 0)) > LEASE_S:
        return True
    return holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid() and not _pid_alive(int(holder.get("pid", 0)))


def describe_owner(record: dict[str, Any]) -> str:
    holder = record.get("owner") or {}
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"


class Lease:
    """A meta record this process holds: ``update`` rewrites it, a thread refreshes its heartbeat until ``stop``."""

    def __init__(self, store: Store, key: str, record: dict[str, Any]):
        self.store, self.key = store, key
        self.record = dict(record, owner=owner())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, **changes: Any) -> None:
        with self._lock:
            self.record.update(changes)
            self.record["owner"] = dict(self.record["owner"], heartbeat=time.time())
            self.store.set_meta(self.key, self.record)

    def start(self) -> "Lease":
        self._thread = threading.Thread(target=self._beat, name=f"hnsel-lease-{self.key}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.update()
            except StoreError:  # a missed beat is retried; LEASE_S allows several
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None


def claim_number(store: Store, first: Callable[[], int], key_of: Callable[[int], str], write: Callable[[int], None],
                 what: str = "round number") -> int:
    """Claim the lowest free number from ``first()`` on (see the module docstring); ``write(n)`` stores the winner's
    record, under the meta key ``key_of(n)``, while its claim still stands."""
    for attempt in range(CLAIM_ATTEMPTS):
        number = first()
        prefix = f"{CLAIM_PREFIX}{number:04d}/"
        claim = f"{prefix}{uuid.uuid4().hex}"
        store.set_meta(claim, {"owner": owner()})
        try:
            keys = store.meta_keys(strong=True)  # one Strong read: the rival claims and the record, if one holds the number
            rivals = [k for k in keys if k.startswith(prefix) and k != claim]
            if not rivals and key_of(number) not in keys:
                write(number)
                return number
            # a dead claimant's leftover claim must not block this number for good
            store.delete_meta([k for k in rivals if is_dead(store.get_meta(k, strong=True))])
        finally:
            store.delete_meta([claim])
        time.sleep(random.uniform(0.0, 0.5) * min(attempt + 1, 4))  # apart, so the next try rarely overlaps
    raise StoreError(f"could not claim a {what} after {CLAIM_ATTEMPTS} tries: other hnsel processes are recording in namespace "
                     f"{store.config.namespace!r} at the same moment; run the command again")


_held_rows: dict[tuple[int, int], list] = {}  # (id(store), thread) -> [its row-lock lease, depth]: re-entrant per thread


def holds_row_lock(store: Store) -> bool:
    """True when this thread holds the row lock on ``store`` (inside ``row_lock``)."""
    return (id(store), threading.get_ident()) in _held_rows


@contextmanager
def row_lock(store: Store) -> Iterator[None]:
    """Hold the namespace's row lock (see the module docstring); re-entrant in one thread on one ``Store``.

    It waits while another live process holds it (an ingest holds it for its whole write); a claim left by a stopped
    process is removed on the way. A lock is taken to read and write rows, never while waiting for something else.
    """
    key = (id(store), threading.get_ident())
    entry = _held_rows.get(key)
    if entry is not None:
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
        return
    lease = _acquire_rows(store)
    _held_rows[key] = [lease, 1]
    try:
        yield
    finally:
        del _held_rows[key]
        lease.stop()
        try:
            store.delete_meta([lease.key])
        except StoreError:  # its heartbeat has stopped: others see it as dead within LEASE_S
            pass


def _acquire_rows(store: Store) -> Lease:
    attempt = 0
    while True:
        lease = Lease(store, f"{ROWS_CLAIM_PREFIX}{uuid.uuid4().hex}", {"what": "rows"})
        lease.update()
        rivals = [k for k in store.meta_keys(ROWS_CLAIM_PREFIX, strong=True) if k != lease.key]
        if not rivals:
            return lease.start()
        store.delete_meta([lease.key])  # back off: of two claimants at once both may lose, never both win
        store.delete_meta([k for k in rivals if is_dead(store.get_meta(k, strong=True))])
        attempt += 1
        time.sleep(random.uniform(0.05, 0.25) * min(attempt, 8))  # apart, so the next tries rarely overlap
