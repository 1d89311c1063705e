"""One convention for every flag (docs/cli.md), checked by walking every command of the typer app's click tree:
--json everywhere, --out says file or folder, the round is --round, --device takes the shared values, batch flags say
what a batch is, usage errors exit 2 in one line; old spellings still work with one deprecation line."""

import inspect
import json
import re

import pytest
import typer
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.cli._common import DEVICE_CHOICES, DeviceParser
from hnsel.data.synthetic import make_pool, write_pool
from test_cli import all_commands  # the one walk of the click tree

runner = CliRunner()
BATCH_WORDS = ("image", "train", "candidate", "ray-image")  # what a batch is: --image-batch, --train-batch, ...




COMMANDS = {" ".join(p): c for p, c in all_commands()}


def options(command):
    return [p for p in command.params if getattr(p, "param_type_name", "") == "option"]


def value_parser(param):
    """The ``parser=`` an option was declared with (recent typers keep it on the parameter's type descriptor)."""
    info = getattr(getattr(param, "type_descriptor", None), "parameter_info", None)
    return getattr(info, "parser", None) or getattr(getattr(param, "type", None), "func", None)


def deprecated(param) -> bool:
    return bool(param.hidden) and (param.help or "").startswith(("Deprecated", "deprecated"))


def test_the_walk_sees_the_whole_tree():
    assert {"select", "embed", "reembed", "train", "eval", "simulate", "report", "round show", "round release", "datasets scenes",
            "annotate export", "annotate pull"} <= set(COMMANDS), sorted(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_follows_the_convention(path):
    command = COMMANDS[path]
    flags = {opt for p in options(command) for opt in p.opts}
    assert "--json" in flags, f"hnsel {path} has no --json"
    for p in options(command):
        if "--out" in p.opts:
            assert re.match(r"(File|Folder)\b", p.help or ""), f"hnsel {path} --out does not say file or folder first: {p.help!r}"
        if "--device" in p.opts:
            parser = value_parser(p)
            assert isinstance(parser, DeviceParser), f"hnsel {path} --device is not the shared device type"
            assert set(parser.choices) <= set(DEVICE_CHOICES) and {"auto", "cpu", "cuda", "cuda:N"} <= set(parser.choices), parser.choices
            assert all(parser.unsupported.values()), "a refused device says why"
        for opt in (o for o in p.opts if "batch" in o):
            if deprecated(p):
                continue
            assert "batch-size" not in opt, f"hnsel {path} {opt}: say what a batch is (--image-batch, --train-batch, ...)"
            if opt != "--batch":  # hardneg's --batch is a mode (full | mini), not a size
                assert re.fullmatch(r"--(%s)-batch" % "|".join(BATCH_WORDS), opt), f"hnsel {path} {opt}: not --WHAT-batch"
        if p.name in ("round_", "round", "number"):
            assert p.opts == ["--round"], f"hnsel {path}: the round is --round, not {p.opts}"
    for arg in (p for p in command.params if getattr(p, "param_type_name", "") == "argument"):
        if arg.name in ("number", "round", "round_", "n"):
            assert deprecated(arg) and "--round" in flags, f"hnsel {path} takes the round positionally"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_a_usage_error_exits_2_in_one_line(path):
    res = runner.invoke(app, path.split() + ["--no-such-option"])
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert len(res.stderr.strip().splitlines()) == 1 and "No such option: --no-such-option" in res.stderr, res.stderr
    assert "Traceback" not in res.output


DEVICE_COMMANDS = sorted(path for path, c in COMMANDS.items() if any("--device" in p.opts for p in options(c)))


@pytest.mark.parametrize("path", DEVICE_COMMANDS)
def test_a_device_nobody_has_is_refused_at_parse_time(path, tmp_path):
    res = runner.invoke(app, path.split() + ["--device", "tpu", "--milvus-uri", str(tmp_path / "never.db")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert "'tpu' is not a device; use auto, cpu, cuda, cuda:N" in res.stderr, res.stderr
    assert not (tmp_path / "never.db").exists()  # refused before any store was opened


def test_the_device_type_knows_the_shared_values_and_says_why_one_is_refused():
    parser = DeviceParser({"mps": "the exact engine runs on cpu or cuda"})
    assert [parser(v) for v in ("auto", "cpu", "cuda", "cuda:0", "cuda:12")] == ["auto", "cpu", "cuda", "cuda:0", "cuda:12"]
    for bad in ("CUDA", "cuda:", "cuda:x", "cuda:-1", " cpu", "gpu"):
        with pytest.raises(typer.BadParameter, match="is not a device"):
            parser(bad)
    with pytest.raises(typer.BadParameter, match="'mps': the exact engine runs on cpu or cuda"):
        parser("mps")
    assert DeviceParser()("mps") == "mps"
    res = runner.invoke(app, ["select", "--device", "mps"])
    assert res.exit_code == 2 and "the exact engine runs on cpu or cuda" in res.stderr


def test_the_encoder_takes_cuda_n_and_refuses_a_device_this_machine_lacks():
    torch = pytest.importorskip("torch")
    from hnsel.errors import HnselError
    from hnsel.model.encoder import resolve_device

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(HnselError, match=f"cuda:{count}"):
        resolve_device(f"cuda:{count}")  # one past the last device (or any, without CUDA)
    with pytest.raises(HnselError, match="is not one of"):
        resolve_device("cuda:x")
    if count:
        assert str(resolve_device(f"cuda:{count - 1}")) == f"cuda:{count - 1}"


def test_api_select_records_by_default_as_the_cli_does():
    assert inspect.signature(api.select).parameters["record"].default is True


def test_old_spellings_work_once_more_with_one_deprecation_line(tmp_path):
    res = runner.invoke(app, ["datasets", "scenes", str(tmp_path / "a"), "--n", "4", "--per-category", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == 4
    assert res.stderr.strip() == "warning: --n is deprecated and goes in the next release; use --num-images"
    res = runner.invoke(app, ["datasets", "scenes", str(tmp_path / "b"), "--n", "4", "--num-images", "5"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "give --num-images only" in res.stderr, res.output
    assert not (tmp_path / "b").exists()
    for path, old in (("embed", "--batch-size"), ("embed", "--ray-batch-size"), ("train", "--batch-size"), ("simulate", "--batch-size"),
                      ("eval", "--batch-size"), ("reembed", "--batch-size"), ("select", "--batch-size")):
        assert old not in runner.invoke(app, [path, "--help"]).stdout  # hidden: the help shows only the new spelling
        assert any(old in p.opts and deprecated(p) for p in options(COMMANDS[path])), (path, old)


@pytest.fixture
def store(tmp_path):
    pool = make_pool(n_paired=15, n_unpaired=60, captions_per_image=2, dim=8, n_coarse=2, fine_per_coarse=3, seed=1)
    images, texts = write_pool(pool, tmp_path / "vec")
    db = ["--milvus-uri", str(tmp_path / "h.db")]
    assert runner.invoke(app, ["ingest", "--images", str(images), "--texts", str(texts), *db]).exit_code == 0
    return db


def test_round_by_option_and_by_the_deprecated_position(store):
    db = store
    res = runner.invoke(app, ["select", "--budget", "4", "--strategy", "hardneg", "--batch", "mini", "--train-batch", "6", "--engine", "milvus",
                              "--json", *db])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["round"] == 1
    log = json.loads(runner.invoke(app, ["round", "show", "--round", "1", "--json", *db]).stdout)
    assert log["params"]["batch_size"] == 6 and log["params"]["batch"] == "mini"  # --train-batch is hardneg's batch_size
    old = runner.invoke(app, ["round", "show", "1", *db])
    assert old.exit_code == 0 and "mini" in old.stdout, old.output
    assert old.stderr.strip() == "warning: `hnsel round show 1` is deprecated and goes in the next release; use `hnsel round show --round 1`"
    plain = runner.invoke(app, ["round", "show", "--round", "1", *db])
    assert plain.exit_code == 0 and plain.stderr == "" and "hardneg" in plain.stdout
    for args, message in ((["round", "show", *db], "Missing option '--round'"), (["round", "show", "1", "--round", "2", *db], "give the round once"),
                          (["select", "--budget", "2", "--strategy", "hardneg", "--candidate-batch", "9", *db],
                           "strategy 'hardneg' takes no parameter(s) --candidate-batch")):
        res = runner.invoke(app, args)
        assert res.exit_code == (1 if args[0] == "select" else 2) and len(res.stderr.strip().splitlines()) == 1, res.output
        assert message in res.stderr, res.stderr
    res = runner.invoke(app, ["round", "release", "1", "--json", *db])
    assert res.exit_code == 0 and json.loads(res.stdout)["released"] == 4, res.output
    assert "use `hnsel round release --round 1`" in res.stderr


def test_api_select_without_record_records_a_round(store, tmp_path):
    from hnsel.config import load_config

    config = load_config(None).with_overrides(uri=store[1])
    first = api.select(config, budget=3, strategy="random", seed=0)
    look = api.select(config, budget=3, strategy="random", seed=1, record=False)
    assert (first.round, look.round) == (1, None)
    assert [r["round"] for r in api.status(config, rounds=True)["rounds"]] == [1]
    res = runner.invoke(app, ["select", "--budget", "2", "--strategy", "coreset", "--batch-size", "7", "--json", "--milvus-uri", store[1]])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["params"]["batch_size"] == 7 and "--candidate-batch (coreset, herding, design)" in res.stderr


def test_make_test_runs_ruff_and_the_tree_passes_it():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if shutil.which("make"):
        plan = subprocess.run(["make", "-n", "test"], cwd=root, capture_output=True, text=True, timeout=300).stdout
        assert "ruff check hnsel tests" in plan
    pytest.importorskip("ruff")
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "hnsel", "tests"], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
