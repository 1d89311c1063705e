"""hnsel on a Ray cluster: connecting to it (``connect``), with one-line errors for an address that does not answer.

Ray is imported only through ``import_ray``, and only when ``--ray`` is given. The jobs: ``ray_embed`` (``hnsel embed
--ray``) and ``ray_select`` (``hnsel select --ray``).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

__all__ = ["Cluster", "connect", "import_ray", "check_reachable", "one_line", "LAKE_HINT"]

LAKE_HINT = "pip install 'hnsel[lake]'"
CONNECT_TIMEOUT_S = 5.0
LOCAL_ADDRESSES = ("", "local", "auto")  # handed to ray.init as they are; no reachability check first


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--ray needs Ray Data: {LAKE_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``ray://host:port`` or ``host:port``; None for an address without a port."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: bool | str) -> None:
    """An explicit address must answer on its port within a few seconds: a typo fails at once, in one line."""
    if not isinstance(address, str) or address in LOCAL_ADDRESSES:
        return
    where = _host_port(address)
    if where is None:
        raise InputError(f"--ray-address {address!r}: give host:port (the head's GCS port, 6379) or ray://host:port (Ray Client, 10001)")
    try:
        socket.create_connection(where, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(f"cannot reach Ray at {address} ({exc.strerror or type(exc).__name__}); check the address and that the cluster is up") from None


@dataclass
class Cluster:
    """A Ray connection: ``close()`` shuts down only what ``connect`` started."""

    ray: Any
    address: str
    started: bool
    cpus: float
    gpus: float

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()

    def describe(self) -> dict:
        return {"address": self.address, "cpus": self.cpus, "gpus": self.gpus}


def connect(address: bool | str = True) -> Cluster:
    """Connect to Ray: ``True`` or ``""`` lets Ray find its cluster (``RAY_ADDRESS``, one started on this machine, else a
    new local one); ``"local"`` starts a local one; else an address (``host:6379``, ``ray://host:10001``, ``auto``).
    A process already connected (``ray.init`` by the caller) is used as it is."""
    ray = import_ray()
    check_reachable(address)
    started = False
    if not ray.is_initialized():
        target = None if address is True or address == "" else str(address)
        try:
            ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError: Ray's own words, on one line
            raise InputError(f"cannot connect to Ray at {target or 'the default address'}: {' '.join(str(exc).split())[:300]}") from None
        started = True
    _quiet(ray)
    resources = ray.cluster_resources()
    name = address if isinstance(address, str) and address else "default"
    return Cluster(ray, name, started, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))


def _quiet(ray: Any) -> None:
    """No Ray Data progress bars or execution logs: hnsel's own progress (stderr) and ``--json`` (stdout) stay clean."""
    ctx = ray.data.DataContext.get_current()
    for name, value in (("enable_progress_bars", False), ("print_on_execution_start", False), ("enable_auto_log_stats", False),
                        ("verbose_stats_logs", False), ("enable_operator_progress_bars", False)):
        if hasattr(ctx, name):
            setattr(ctx, name, value)
    for logger in ("ray", "ray.data"):
        logging.getLogger(logger).setLevel(logging.ERROR)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:400] + ("..." if len(text) > 400 else "")
