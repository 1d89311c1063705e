"""Shared fixtures: a Milvus Lite file per test, one real Milvus server per session, a namespace per test.

``store_uri`` runs a test twice, against Milvus Lite and against the server (``-m "not server"`` skips
the latter). The server is the PyPI ``milvus-server`` (Milvus 2.3.5 standalone), started on free ports
in a temporary directory; see milvus/COMPATIBILITY.md for why the embedded etcd needs its own config
file. Set ``HNSEL_TEST_MILVUS_URI`` to test against a server you started yourself instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

SERVER_START_TIMEOUT = 240.0  # seconds; ~11 s is usual on 2 idle cores, much longer when other jobs hold them
SERVER_STOP_TIMEOUT = 30.0
SERVER_START_ATTEMPTS = 2  # a second try with new ports if another run took one of ours meanwhile
INTERNAL_PORT_FLAGS = (
    "--root-coord-port", "--proxy-internal-port", "--query-coord-port", "--query-node-port",
    "--index-coord-port", "--index-node-port", "--data-coord-port", "--data-node-port",
)
_server_log: Path | None = None  # set once the session server starts, shown when a server test fails


# --- shared builders (``from conftest import unit, clustered, exact_problem``) -------------------------------------------------
def unit(x) -> np.ndarray:
    """Rows scaled to unit length, float32 (computed in float64)."""
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(seed=2, d=12, n_cand=150, n_paired=20, n_text=60):
    """Candidates in 5 clusters of very different sizes; captions near the biggest cluster (hard negatives crowd there)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(5, d)))
    sizes = [90, 20, 20, 10, 10]
    cand = unit(np.concatenate([centres[c] + 0.15 * rng.normal(size=(n, d)) for c, n in enumerate(sizes)]))
    paired = unit(centres[rng.integers(0, 5, n_paired)] + 0.3 * rng.normal(size=(n_paired, d)))
    owner = rng.integers(0, n_paired, n_text)
    txt = unit(paired[owner] + centres[0] + 0.3 * rng.normal(size=(n_text, d)))
    return cand, paired, txt, owner


def exact_problem(cand, paired, txt=None, owner=None, max_limit=8):
    """A ``SelectionProblem`` held in memory (``ExactIndex``, ``ArrayVectors``): candidates ``u000...``, paired images
    ``p000...``, captions ``t0...`` whose image is ``paired[owner[j]]`` (no captions: an empty anchor stream)."""
    from hnsel.strategies import AnchorChunk, ArrayVectors, ExactIndex, SelectionProblem

    cand_ids = np.array([f"u{i:03d}" for i in range(len(cand))], dtype=object)
    img_ids = np.array([f"p{i:03d}" for i in range(len(paired))], dtype=object)
    index = ExactIndex({"paired": (img_ids, paired), "candidates": (cand_ids, cand)}, max_limit=max_limit)
    txt = np.zeros((0, cand.shape[1]), np.float32) if txt is None else txt
    pos = [frozenset([img_ids[o]]) for o in (owner if owner is not None else [])]

    def anchors(chunk_size):
        for s in range(0, len(txt), chunk_size):
            yield AnchorChunk(np.array([f"t{i}" for i in range(s, min(len(txt), s + chunk_size))], dtype=object), txt[s:s + chunk_size],
                              tuple(pos[s:s + chunk_size]))

    return SelectionProblem(cand_ids, index, anchors, len(txt), vectors=ArrayVectors(cand, img_ids, paired))


@pytest.fixture
def lite_uri(tmp_path: Path) -> str:
    """Path of a fresh Milvus Lite database file (created on first use)."""
    return str(tmp_path / "hnsel.db")


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses, so tests sharing the session server never meet."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.server)], ids=["lite", "server"])
def store_uri(request: pytest.FixtureRequest) -> str:
    """A Milvus URI: a Lite file in tmp_path, or the session's server."""
    if request.param == "lite":
        return request.getfixturevalue("lite_uri")
    return request.getfixturevalue("milvus_server")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``http://127.0.0.1:PORT`` of a Milvus server that lives for the whole session."""
    given = os.environ.get("HNSEL_TEST_MILVUS_URI")
    if given:
        yield given
        return
    exe = _find_milvus_server()
    base = tmp_path_factory.mktemp("milvus-server")
    global _server_log
    _server_log = base / "milvus-server.log"
    proc, uri = _start_server(exe, base)
    try:
        yield uri
    finally:
        _stop_server(proc)
        for data in base.glob("data*"):  # ~250 MB of unpacked binaries and ~250 MB of data; keep the logs
            shutil.rmtree(data / "bin", ignore_errors=True)
            shutil.rmtree(data / "data", ignore_errors=True)


def _find_milvus_server() -> str:
    beside_python = Path(sys.executable).with_name("milvus-server")
    exe = str(beside_python) if beside_python.exists() else shutil.which("milvus-server")
    if exe:
        return exe
    why = "milvus-server is not installed (pip install -e '.[dev]' on Linux x86_64 provides it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {why}: CI must run the server tests", pytrace=False)
    pytest.skip(why)


def _start_server(exe: str, base: Path) -> tuple[subprocess.Popen, str]:
    for attempt in range(1, SERVER_START_ATTEMPTS + 1):
        proc = _launch(exe, base / f"data{attempt}", base / "milvus-server.log")
        uri, problem = _wait_ready(proc, base / f"data{attempt}")
        if uri:
            return proc, uri
        _stop_server(proc)
    pytest.fail(f"milvus-server did not start: {problem}\n--- {base} logs ---\n{_log_tail(base)}", pytrace=False)


def _launch(exe: str, data: Path, log: Path) -> subprocess.Popen:
    data.mkdir(parents=True)
    etcd_client, etcd_peer, proxy, *internal = _free_ports(3 + len(INTERNAL_PORT_FLAGS))
    etcd_config = data / "embedEtcd.yaml"
    etcd_config.write_text(
        "name: default\n"
        f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{etcd_peer}\n"
    )
    args = [exe, "--data", str(data), "--proxy-port", str(proxy), "--etcd-port", str(etcd_client)]
    for flag, port in zip(INTERNAL_PORT_FLAGS, internal):
        args += [flag, str(port)]
    # Milvus maps ETCD_CONFIG_PATH to etcd.config.path; unbuffered so the wrapper's own output reaches the log.
    env = {**os.environ, "ETCD_CONFIG_PATH": str(etcd_config), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        # Own session: if SIGINT is not enough, killpg also takes the milvus child the wrapper started.
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _wait_ready(proc: subprocess.Popen, data: Path) -> tuple[str | None, str]:
    """Poll until a client answers; ``(None, why)`` as soon as the server is known dead."""
    from pymilvus import MilvusClient

    from hnsel.store.connection import GRPC_OPTIONS

    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, f"the wrapper exited with code {proc.returncode}"
        if "panic:" in _read(data / "logs" / "milvus-stderr.log"):
            return None, "milvus panicked (see milvus-stderr.log)"
        port = _proxy_port(data / "configs" / "milvus.yaml")
        if port:
            uri = f"http://127.0.0.1:{port}"
            try:
                # hnsel's keepalive: pymilvus shares this connection with every later client of the same address
                client = MilvusClient(uri, timeout=5, grpc_options=dict(GRPC_OPTIONS))
                client.list_collections()
                client.close()
                return uri, ""
            except Exception:  # not ready yet: connection refused, timeout, "service not ready"
                pass
        time.sleep(0.5)
    return None, f"no answer within {SERVER_START_TIMEOUT:.0f} s"


def _proxy_port(config: Path) -> int | None:
    """The port the wrapper really chose: a --proxy-port already taken silently becomes the next free one."""
    section = re.search(r"^proxy:\n(.*?)^\S", _read(config), re.MULTILINE | re.DOTALL)
    port = re.search(r"^  port: (\d+)", section.group(1), re.MULTILINE) if section else None
    return int(port.group(1)) if port else None


def _stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (the wrapper then stops Milvus), wait, then kill the whole process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created; reaps a stuck or orphaned milvus child
    except ProcessLookupError:
        pass
    proc.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _log_tail(base: Path, lines: int = 40) -> str:
    parts = []
    for log in [base / "milvus-server.log", *sorted(base.glob("data*/logs/milvus-std*.log"))]:
        text = _read(log).splitlines()[-lines:]
        if text:
            parts.append(f"== {log}\n" + "\n".join(text))
    return "\n".join(parts) or "(no log written)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the server's log tail to the report of a failed test that used the server."""
    outcome = yield
    report = outcome.get_result()
    callspec = getattr(item, "callspec", None)
    used_server = "milvus_server" in item.fixturenames or (callspec and callspec.params.get("store_uri") == "server")
    if report.failed and used_server and _server_log is not None:
        report.sections.append(("milvus-server log", _log_tail(_server_log.parent, lines=20)))
