"""Installable on its own (issue 28): the wheel carries everything hnsel reads at run time, and works outside the checkout.

The wheel test builds hnsel from a copy of the sources, installs it with ``--no-deps`` into a fresh virtual
environment that sees this environment's third-party packages through a path file (installing torch again would
cost minutes and gigabytes), and runs ``hnsel`` from a folder outside the checkout with no PYTHONPATH: the hnsel it
imports must be the installed copy. Also: ``python -m hnsel``, ``--version``, the typed and lazy API facade.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import hnsel
from hnsel import api

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hnsel"
RUN_TIMEOUT = 600  # seconds per subprocess: generous, the suite shares busy cores


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def _run(args, cwd: Path, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT, **kw)
    assert out.returncode == 0, f"{args}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def _data_files() -> set[str]:
    """Every file under hnsel/ a wheel must carry besides modules (static assets, templates, configs, py.typed)."""
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def test_python_m_hnsel_and_version():
    out = subprocess.run([sys.executable, "-m", "hnsel", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert out.returncode == 0 and out.stdout.strip() == f"hnsel {hnsel.__version__}", out.stderr
    helped = subprocess.run([sys.executable, "-m", "hnsel", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert helped.returncode == 0 and "--version" in helped.stdout and "select" in helped.stdout


def test_api_facade_is_typed_for_editors_and_lazy_at_run_time():
    """Every lazily resolved name is imported under TYPE_CHECKING from the module it resolves to (so editors and mypy
    see the real signature), resolves at run time, and importing hnsel.api loads no model stack."""
    tree = ast.parse((PACKAGE / "api.py").read_text())
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1
                for alias in imp.names:
                    typed[alias.asname or alias.name] = f"{imp.module}:{alias.name}"
    where = {name: f"{module}:{api._RENAMED.get(name, name)}" for name, module in api._WHERE.items()}
    assert typed == where
    assert (PACKAGE / "py.typed").is_file()
    for name in api.__all__:
        assert getattr(api, name) is not None
    script = "import sys, hnsel.api; print(sorted(m for m in ('torch', 'open_clip', 'timm', 'pymilvus') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources (the checkout gets no build/ or egg-info), built with this environment's
    setuptools (no download)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "hnsel", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--quiet", "-w", tmp / "dist"], cwd=src)
    (wheel,) = (tmp / "dist").glob("hnsel-*.whl")
    return wheel


def _fresh_venv(tmp: Path) -> Path:
    """A venv whose own site-packages comes first; this environment's packages (torch, pymilvus, ...) after it."""
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    theirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (site / "zz_hnsel_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(theirs)))  # a path file: no .pth inside is run
    return env_dir


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    from hnsel.data.synthetic import make_pool, write_pool

    wheel = _build_wheel(tmp_path)
    env_dir = _fresh_venv(tmp_path)
    _run([sys.executable, "-m", "pip", "--python", env_dir / "bin" / "python", "install", "--no-deps", "--quiet", wheel], cwd=tmp_path)
    work = tmp_path / "user"
    work.mkdir()
    python, hnsel_bin = env_dir / "bin" / "python", env_dir / "bin" / "hnsel"
    where = _run([python, "-c", "import hnsel, hnsel.report; print(hnsel.__file__); print(hnsel.report.__file__)"], cwd=work).stdout.split()
    installed = Path(where[0]).parent
    assert installed.is_relative_to(env_dir) and not installed.is_relative_to(ROOT), where
    assert {f for f in _data_files() if (installed / f).is_file()} == _data_files(), "package data missing from the wheel"
    assert _run([hnsel_bin, "--version"], cwd=work).stdout.strip() == f"hnsel {hnsel.__version__}"
    images, texts = write_pool(make_pool(n_paired=10, n_unpaired=60, captions_per_image=2, dim=8, n_coarse=2, fine_per_coarse=3, seed=3), work / "vec")
    db = work / "h.db"
    _run([hnsel_bin, "ingest", "--milvus-uri", db, "--images", images, "--texts", texts], cwd=work)
    status = json.loads(_run([hnsel_bin, "status", "--milvus-uri", db, "--json"], cwd=work).stdout)
    assert status["images"] == {"paired": 10, "unpaired": 60} and status["dim"] == 8
    _run([hnsel_bin, "select", "--milvus-uri", db, "--budget", "5", "--out", work / "picks.csv", "--seed", "1"], cwd=work)
    assert len((work / "picks.csv").read_text().strip().splitlines()) == 6  # header and five picks
    _run([python, "-m", "hnsel", "report", "--milvus-uri", db, "--out", work / "report"], cwd=work)
    page = work / "report" / "index.html"  # the page is built from the packaged static files (read at run time)
    assert page.is_file() and "<html" in page.read_text(encoding="utf-8").lower()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_only_make_test_installs_chromium():
    """`make demo` (and setup) never reach the apt-get of Chromium; `make test` does, for the report's browser test."""
    def plan(target: str) -> str:  # make -n prints every recipe line it would run, silent (@) ones included
        return subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT).stdout

    for target in ("demo", "setup", "demo-vectors"):
        assert "chromium" not in plan(target), target
    assert "apt-get" in plan("test") and "chromium-driver" in plan("test")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_only_make_test_installs_label_studio():
    """Label Studio's own venv is made by `make test` alone (-B: as on a fresh clone, every install step planned)."""
    def plan(target: str) -> str:
        return subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT).stdout

    for target in ("demo", "setup", "demo-vectors"):
        assert "label-studio" not in plan(target), target
    assert "pip install --quiet 'label-studio" in plan("test")
