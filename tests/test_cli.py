"""The command line: thin, documented, one-line errors with exit code 1, JSON that parses."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hnsel.cli import app
from hnsel.data.synthetic import make_pool, write_pool

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def all_commands():
    """(path, click command) for every leaf command, sub-apps included."""
    root = typer.main.get_command(app)

    def walk(cmd, path):
        if getattr(cmd, "commands", None):  # a group (typer may vendor its own click: no isinstance on click.Group)
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield path, cmd

    return list(walk(root, []))


def test_the_command_walk_finds_every_command():
    paths = {" ".join(p) for p, _ in all_commands()}
    assert {"select", "status", "embed", "train", "eval", "simulate", "round list", "annotate import", "report"} <= paths, paths


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in all_commands()])
def test_every_command_has_help_and_is_in_the_readme(path):
    result = runner.invoke(app, path.split() + ["--help"])
    assert result.exit_code == 0, result.output
    command = dict((" ".join(p), c) for p, c in all_commands())[path]
    assert (command.help or "").strip(), f"hnsel {path} has no help text"
    assert f"hnsel {path}" in (ROOT / "README.md").read_text(), f"README.md does not document `hnsel {path}`"


@pytest.fixture
def vectors(tmp_path):
    pool = make_pool(n_paired=15, n_unpaired=80, captions_per_image=2, dim=8, n_coarse=2, fine_per_coarse=3, seed=1)
    return write_pool(pool, tmp_path / "vec")


def invoke(args):
    return runner.invoke(app, [str(a) for a in args])


def test_ingest_select_status_json(tmp_path, vectors):
    db = tmp_path / "h.db"
    images, texts = vectors
    res = invoke(["ingest", "--milvus-uri", db, "--images", images, "--texts", texts, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"images": 95, "texts": 30, "dim": 8}
    res = invoke(["status", "--milvus-uri", db, "--json"])
    assert json.loads(res.stdout) == {"images": {"paired": 15, "unpaired": 80}, "texts": {"paired": 30, "unpaired": 0}, "dim": 8, "selected": 0,
                                      "rounds": [], "unfinished": [], "model": None, "reembed": None,
                                      "collections": {"images": "hnsel_images", "texts": "hnsel_texts"}}
    out = tmp_path / "picks.csv"
    res = invoke(["select", "--milvus-uri", db, "--budget", 10, "--out", out, "--json", "--seed", 4])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["strategy"] == "auto" and summary["budget"] == 10 and summary["out"] == str(out)  # the default
    assert summary["stats"]["auto_decision"]["coverage_picks"] + summary["stats"]["auto_decision"]["hardneg_picks"] == 10
    lines = out.read_text().splitlines()
    assert lines[0] == "rank,id,score,violations,reason,uri" and len(lines) == 11
    res = invoke(["select", "--milvus-uri", db, "--budget", 3, "--strategy", "random", "--json", "--no-record"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["picks"]) == 3


@pytest.mark.parametrize("args,message", [
    (["select", "--budget", "0"], "--budget must be at least 1"),
    (["select", "--budget", "100000"], "larger than the 80 candidates"),
    (["select", "--budget", "5", "--strategy", "magic"], "unknown strategy 'magic'"),
    (["select", "--budget", "5", "--weight", "sum"], "--weight 'sum'"),
    (["select", "--budget", "5", "--modality", "audio"], "--modality 'audio'"),
    (["select", "--budget", "5", "--out", "picks.xlsx"], "unknown output type '.xlsx'"),
    (["ingest", "--images", "nope.parquet"], "nope.parquet: file not found"),
])
def test_errors_are_one_line_exit_1(tmp_path, vectors, args, message):
    db = tmp_path / "h.db"
    images, texts = vectors
    assert invoke(["ingest", "--milvus-uri", db, "--images", images, "--texts", texts]).exit_code == 0
    res = invoke(args + ["--milvus-uri", db])
    assert res.exit_code == 1
    assert message in res.stderr
    assert "Traceback" not in res.output + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_select_to_a_missing_folder_records_no_round(tmp_path, vectors):
    db = tmp_path / "h.db"
    images, texts = vectors
    assert invoke(["ingest", "--milvus-uri", db, "--images", images, "--texts", texts]).exit_code == 0
    res = invoke(["select", "--milvus-uri", db, "--budget", 5, "--out", tmp_path / "missing" / "picks.csv"])
    assert res.exit_code == 1 and "does not exist; create it first" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    status = json.loads(invoke(["status", "--milvus-uri", db, "--json"]).stdout)
    assert status["selected"] == 0  # the store is as it was: no round recorded for picks that were never written


def test_select_on_empty_store_says_what_to_do(tmp_path):
    res = invoke(["select", "--milvus-uri", tmp_path / "empty.db", "--budget", 5])
    assert res.exit_code == 1 and "hnsel ingest" in res.stderr


def test_bad_uri_and_config(tmp_path):
    res = invoke(["status", "--milvus-uri", tmp_path / "store.sqlite"])
    assert res.exit_code == 1 and "must end in .db" in res.stderr
    bad = tmp_path / "hnsel.toml"
    bad.write_text("[store]\nflavour = 1\n")
    res = invoke(["status", "--config", bad])
    assert res.exit_code == 1 and "unknown key(s) ['flavour']" in res.stderr


def test_second_process_on_a_lite_file_gets_a_clear_error(tmp_path, vectors):
    db = tmp_path / "h.db"
    images, texts = vectors
    hnsel = [sys.executable, str(ROOT / "cli.py")]
    # Separate processes throughout: this test process may hold Milvus Lite files of its own.
    subprocess.run(hnsel + ["ingest", "--milvus-uri", str(db), "--images", str(images), "--texts", str(texts)], check=True, capture_output=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from pymilvus import MilvusClient
        client = MilvusClient({str(db)!r})
        print("open", flush=True)
        sys.stdin.readline()  # holds the file until the test is done (a timed sleep ran out on busy cores)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        res = subprocess.run(hnsel + ["select", "--milvus-uri", str(db), "--budget", "5"], capture_output=True, text=True)
        assert res.returncode == 1
        assert "already open in another process" in res.stderr and "milvus-lite server" in res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()


def test_python_cli_shim_runs_the_same_app():
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "select" in res.stdout


def test_store_commands_never_import_torch(tmp_path, vectors):
    """status, ingest, select (milvus engine) and round commands load no model stack: ``hnsel.api`` resolves lazily."""
    db = tmp_path / "h.db"
    images, texts = vectors
    script = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from hnsel.cli import app
        run = lambda *a: CliRunner().invoke(app, [*a, "--milvus-uri", {str(db)!r}])
        for args in (["ingest", "--images", {str(images)!r}, "--texts", {str(texts)!r}], ["status", "--json"],
                     ["select", "--budget", "3", "--strategy", "hardneg", "--engine", "milvus", "--json"], ["round", "list"], ["round", "show", "--round", "1"]):
            result = run(*args)
            assert result.exit_code == 0, (args, result.output)
        print(sorted(m for m in ("torch", "open_clip", "timm", "transformers") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
