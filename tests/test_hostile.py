"""Hostile input, on Milvus Lite and on a server: ids that would break a filter expression, overlong fields,
odd Label Studio shapes, files that are not UTF-8, extreme vectors, non-finite parameters and usage mistakes.

Every refusal is one line on stderr, exit code 1, no traceback, and leaves the store row for row as it was.
Every id a file system or manifest can hold round-trips: ingest, select, mark, export, import, release.
"""

import json
import math
import uuid

import numpy as np
import pytest
from typer.testing import CliRunner

from hnsel.cli import app
from hnsel.config import HnselConfig, StoreConfig
from hnsel.store import open_store

DIM = 8
# Each broke something: a quote closed pymilvus's own quoting (x', 'p0 marked p0), \ and newline were invalid
# escapes, json.dumps wrote \u escapes Lite refuses and surrogate pairs the server refuses, [/x] crashed rich.
HOSTILE = ["x', 'p0", "o'brien.png", 'dq"x', "back\\slash", "new\nline", "tab\tx", "café", "😀 emoji", "[/x]", "[bold]b",
           "é\\\"'", "a\\nb", "bell\x07", "%_like", "中文 ид"]
PAIRED = ["p0", "p1", "café paired", "😀 pair", "q'1"]
SECRETS = ("PASSWORD1", "TOKEN2", "TOKEN3", "TOKEN4")  # in the URI, --token, HNSEL_MILVUS_TOKEN, hnsel.toml
runner = CliRunner()


def vec(i: int) -> list[float]:
    return np.random.default_rng(i).normal(size=DIM).round(6).tolist()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def images_rows():
    rows = [{"id": i, "vector": vec(n), "pool": "paired", "uri": f"file:///{i}"} for n, i in enumerate(PAIRED)]
    rows += [{"id": i, "vector": vec(100 + n), "pool": "unpaired", "uri": f"file:///{i}"} for n, i in enumerate(HOSTILE)]
    rows.append({"id": "huge", "vector": [1e200] * DIM, "pool": "unpaired"})  # its plain norm overflows to inf
    rows.append({"id": "tiny", "vector": [1e-300] * DIM, "pool": "unpaired"})  # its squares underflow to 0
    return rows


def texts_rows():
    return [{"id": f"{i} #{k}'\"", "vector": vec(1000 + 10 * n + k), "pool": "paired", "image_id": i, "text": f"caption {k} of {i}"}
            for n, i in enumerate(PAIRED) for k in range(2)]


def invoke(args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def snapshot(store):
    """Every row of both collections and every meta record: what 'unchanged' is compared on (read Strong)."""
    store.sync()
    out = {}
    for kind, fields in (("images", ("id", "vector", "pool", "round", "uri")), ("texts", ("id", "vector", "pool", "round", "image_id", "text"))):
        out[kind] = sorted((tuple(json.dumps(r[f]) for f in fields) for b in store.iter_rows(kind, "", fields) for r in b))
    out["meta"] = {k: store.get_meta(k) for k in store.meta_keys()}
    return out


def one_line_error(res, message, code=1):
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output + res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert message in res.stderr, res.stderr


@pytest.fixture(scope="module", params=["lite", pytest.param("server", marks=pytest.mark.server)])
def hostile(request, tmp_path_factory):
    """A store holding the hostile ids, shared by this module's tests (each refusal checks it is unchanged). On the
    server every command is given credentials in the URI and a token, which nothing may record or print."""
    base = tmp_path_factory.mktemp("hostile")
    uri = str(base / "h.db") if request.param == "lite" else request.getfixturevalue("milvus_server")
    namespace = f"hostile_{uuid.uuid4().hex[:12]}"
    flags = ["--milvus-uri", uri, "--namespace", namespace]
    if request.param == "server":
        scheme, host = uri.split("://", 1)
        flags = ["--milvus-uri", f"{scheme}://root:{SECRETS[0]}@{host}", "--token", f"root:{SECRETS[1]}", "--namespace", namespace]
    images, texts = write_jsonl(base / "images.jsonl", images_rows()), write_jsonl(base / "texts.jsonl", texts_rows())
    res = invoke(["ingest", *flags, "--images", images, "--texts", texts])
    assert res.exit_code == 0, res.output
    config = HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))
    with open_store(config.store) as store:  # one connection for every snapshot of the module
        yield config, flags, store


def test_hostile_ids_round_trip(hostile, tmp_path):
    config, flags, store = hostile
    candidates = HOSTILE + ["huge", "tiny"]
    held = {r["id"]: r for r in store.get("images", candidates + PAIRED, ["id", "vector", "pool"])}
    paged = [r["id"] for b in store.iter_rows("images", "", ("id",), batch_size=3) for r in b]  # pages cut after hostile ids
    assert set(held) == set(candidates + PAIRED)  # every id stored and found again by id
    assert sorted(paged) == sorted(candidates + PAIRED)  # each exactly once
    assert np.allclose(held["huge"]["vector"], 1 / math.sqrt(DIM)) and np.allclose(held["tiny"]["vector"], 1 / math.sqrt(DIM))

    res = invoke(["select", *flags, "--budget", 6, "--strategy", "hardneg", "--seed", 3])  # the picks table prints [/x] as text
    assert res.exit_code == 0, res.output
    res = invoke(["select", *flags, "--budget", len(candidates) - 6, "--strategy", "random", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["round"] == 2
    store.sync()
    rounds = {r["id"]: r["round"] for b in store.iter_rows("images", "", ("id", "round")) for r in b}
    assert {i for i, r in rounds.items() if r > 0} == set(candidates)  # every hostile pick marked ...
    assert all(rounds[i] == -1 for i in PAIRED)  # ... and no paired image (x', 'p0 once marked p0)
    assert invoke(["select", *flags, "--budget", 1, "--no-record"]).exit_code == 1  # nothing is offered twice

    out = tmp_path / "round2.jsonl"
    assert invoke(["annotate", "export", *flags, "--round", 2, "--format", "jsonl", "--out", out]).exit_code == 0
    exported = [json.loads(line)["image_id"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(exported) == sorted(i for i in candidates if rounds[i] == 2)
    annotated = tmp_path / "annotated.jsonl"
    write_jsonl(annotated, [{"image_id": i, "caption": f"a photo called {i}", "vector": vec(5000 + n)} for n, i in enumerate(exported)])
    res = invoke(["annotate", "import", *flags, annotated, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images_paired"] == len(exported)
    res = invoke(["round", "release", *flags, "--round", 1])
    assert res.exit_code == 0, res.output
    store.sync()
    rows = {r["id"]: r for r in store.get("images", candidates, ["id", "pool", "round"])}
    captions = {r["image_id"] for b in store.iter_rows("texts", store.pool_filter("texts", "paired"), ("image_id",)) for r in b}
    assert {i for i, r in rows.items() if r["pool"] == "paired"} == set(exported) <= captions
    assert {i for i, r in rows.items() if r["round"] == -1} == set(candidates) - set(exported)  # round 1 released, by id


# (name, file builder or None, args after the command's flags, message); "{f}" in args is the built file
def _file(suffix, data):
    def build(path):
        path = path.with_suffix(suffix)
        path.write_bytes(data)
        return path
    return build


def _ls(tasks):
    return _file(".json", json.dumps(tasks).encode())


def _task(annotations):
    return [{"id": 1, "data": {"image": "x", "image_id": "[/x]"}, "annotations": annotations}]


REFUSALS = [
    ("caption over 65535 bytes", lambda p: write_jsonl(p, [{"id": "new text", "vector": vec(1), "pool": "paired", "image_id": "p0", "text": "é" * 40000}]),
     ["ingest", "--texts", "{f}"], "text is 80000 bytes of UTF-8"),
    ("image_id over 512", lambda p: write_jsonl(p, [{"id": "t", "vector": vec(1), "pool": "paired", "image_id": "p" * 600}]),
     ["ingest", "--texts", "{f}"], "image_id is 600 bytes"),
    ("emoji id over 512 bytes", lambda p: write_jsonl(p, [{"id": "😀" * 200, "vector": vec(1), "pool": "unpaired"}]),
     ["ingest", "--images", "{f}"], "id is 800 bytes"),
    ("numeric strings", lambda p: write_jsonl(p, [{"id": "s", "vector": ["0.5"] * DIM, "pool": "unpaired"}]),
     ["ingest", "--images", "{f}"], "not a number ('0.5')"),
    ("booleans", lambda p: write_jsonl(p, [{"id": "b", "vector": [True] * DIM, "pool": "unpaired"}]),
     ["ingest", "--images", "{f}"], "not a number (True)"),
    ("not UTF-8 JSONL", _file(".jsonl", b'{"id": "caf\xe9", "vector": [1, 2], "pool": "unpaired"}\n'),
     ["ingest", "--images", "{f}"], "line 1 is not UTF-8 text"),
    ("makes a non-ASCII paired image unpaired", lambda p: write_jsonl(p, [{"id": "café paired", "vector": vec(2), "pool": "unpaired"}]),
     ["ingest", "--images", "{f}"], "image 'café paired' would become unpaired"),
    ("not UTF-8 CSV", _file(".csv", b"image_id,caption\ncaf\xe9,a cat\n"),
     ["annotate", "import", "{f}"], "not UTF-8 text"),
    ("markup in an unknown id", lambda p: write_jsonl(p, [{"image_id": "[/x] [bold]gone", "caption": "c"}]),
     ["annotate", "import", "{f}"], "image '[/x] [bold]gone' is not in the store"),
    ("Label Studio data a string", _ls([{"id": 1, "data": "x", "annotations": []}]), ["annotate", "import", "{f}"], "task 1: data is a string"),
    ("Label Studio annotations a dict", _ls(_task({"result": []})), ["annotate", "import", "{f}"], "annotations is an object"),
    ("Label Studio annotations [null]", _ls(_task([None])), ["annotate", "import", "{f}"], "an annotation is null"),
    ("Label Studio result a dict", _ls(_task([{"result": {"from_name": "caption"}}])), ["annotate", "import", "{f}"], "result is an object"),
    ("Label Studio value a string", _ls(_task([{"result": [{"from_name": "caption", "value": "circle"}]}])),
     ["annotate", "import", "{f}"], "value is a string"),
    ("Label Studio value.text numbers", _ls(_task([{"result": [{"from_name": "caption", "value": {"text": [1, 2]}}]}])),
     ["annotate", "import", "{f}"], "value.text is a list"),
    ("negative seed", None, ["select", "--budget", "2", "--seed", "-1"], "--seed -1: use an integer of 0 or more"),
    ("lambda inf", None, ["select", "--budget", "2", "--strategy", "density", "--lambda", "inf"], "--lambda inf: use a finite number"),
    ("lambda nan", None, ["select", "--budget", "2", "--strategy", "auto", "--lambda", "nan"], "--lambda nan: use a finite number"),
    ("paired-mb inf", None, ["select", "--budget", "2", "--paired-mb", "inf"], "--paired-mb inf: use a finite number"),
    ("budget abc", None, ["select", "--budget", "abc"], "Invalid value for '--budget'"),
    ("unknown option", None, ["select", "--budget", "2", "--colour", "red"], "No such option: --colour"),
    ("release -1", None, ["round", "release", "--round", "-1"], "greater than or equal to 1"),
    ("show a missing round", None, ["round", "show", "--round", "99"], "round 99 is not in the round log"),
]


USAGE_ERRORS = {"budget abc", "unknown option", "release -1"}


@pytest.mark.parametrize("case", [c[0] for c in REFUSALS])
def test_hostile_input_is_refused_in_one_line_and_changes_nothing(hostile, tmp_path, case):
    config, flags, store = hostile
    _, build, args, message = next(c for c in REFUSALS if c[0] == case)
    path = build(tmp_path / "input.jsonl") if build else None
    args = [str(path) if a == "{f}" else a for a in args]
    before = snapshot(store)
    res = invoke(args[:2] + flags + args[2:] if args[0] in ("annotate", "round") else args[:1] + flags + args[1:])
    one_line_error(res, message, code=2 if case in USAGE_ERRORS else 1)  # click's convention: usage 2, runtime 1
    assert snapshot(store) == before


def test_a_read_only_texts_collection_is_refused_before_images_are_written(hostile, tmp_path):
    config, flags, store = hostile
    toml = tmp_path / "hnsel.toml"
    toml.write_text("[store.texts]\nread_only = true\n")
    images = write_jsonl(tmp_path / "i.jsonl", [{"id": "brand new", "vector": vec(7), "pool": "paired"}])
    texts = write_jsonl(tmp_path / "t.jsonl", [{"id": "its caption", "vector": vec(8), "pool": "paired", "image_id": "brand new"}])
    before = snapshot(store)
    one_line_error(invoke(["ingest", *flags, "--config", toml, "--images", images, "--texts", texts]), "is configured read_only")
    assert snapshot(store) == before


def test_label_studio_string_text_is_one_caption_and_a_bom_csv_keeps_its_first_column(tmp_path):
    from hnsel.data.annotator_files import read_annotations

    export = tmp_path / "ls.json"
    export.write_text(json.dumps([{"data": {"image_id": "a"}, "annotations": [{"result": [{"from_name": "caption", "value": {"text": "circle"}}]}]}]))
    assert [(a.image_id, a.caption) for a in read_annotations(export)[1]] == [("a", "circle")]  # not five one-letter captions
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffimage_id,caption\ncafé,a cat\n".encode("utf-8"))
    assert [(a.image_id, a.caption) for a in read_annotations(bom)[1]] == [("café", "a cat")]


def test_json_output_is_json_even_for_non_finite_scores(monkeypatch, capsys):
    from hnsel.cli._common import print_json

    print_json({"score": float("inf"), "scores": np.array([1.0, np.nan]), "ok": 1})
    assert json.loads(capsys.readouterr().out) == {"score": None, "scores": [1.0, None], "ok": 1}


def test_embed_a_folder_of_hostile_file_names_and_refuse_an_overlong_caption_before_writing(lite_uri, tmp_path):
    """o'brien.png made every file of a folder fail after the model record was written; a caption over the VARCHAR
    limit is refused before the model record or any vector is written."""
    from _embed_helpers import write_images, write_tiny_config

    from hnsel.model.encoder import load_encoder
    from hnsel.errors import InputError
    from hnsel.workflows.embed import embed

    names = ["o'brien.png", "café.png", "😀 smile.png", "[/x].png", 'say "hi".png', "back\\slash.png"]
    write_images(tmp_path / "img", names)
    encoder = load_encoder(str(write_tiny_config(tmp_path)), "none", "cpu")
    config = HnselConfig(store=StoreConfig(uri=lite_uri, namespace="photos"))
    assert embed(config, tmp_path / "img", encoder=encoder).images_embedded == len(names)
    again = embed(config, tmp_path / "img", encoder=encoder)  # resumable: every hostile id is found again by id
    assert (again.images_embedded, again.images_skipped) == (0, len(names))
    with open_store(config.store) as store:
        assert sorted(r["id"] for b in store.iter_rows("images") for r in b) == sorted(names)  # a folder's ids are its file names

    fresh = HnselConfig(store=StoreConfig(uri=lite_uri, namespace="fresh"))
    manifest = tmp_path / "m.jsonl"
    write_jsonl(manifest, [{"id": "a", "uri": str(tmp_path / "img" / "café.png"), "caption": "x" * 70000}])
    with pytest.raises(InputError, match="text is 70000 bytes"):
        embed(fresh, manifest, encoder=encoder)
    with open_store(fresh.store) as store:
        assert not store.has("images") and store.get_meta("model") is None


def _listening_pid(port: int) -> int:
    """The process listening on a local TCP port (from /proc: the socket's inode, then the fd that holds it)."""
    import os
    from pathlib import Path

    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    pytest.skip(f"no process found listening on port {port}")


@pytest.mark.server
@pytest.mark.parametrize("hostile", ["server"], indirect=True)  # the module's server store; pausing needs a server process
def test_a_paused_server_is_a_one_line_error_naming_what_to_check(hostile, tmp_path):
    """A server that stops answering mid-command gave a traceback after about 85 s; now the configured timeout
    (here 2 s) ends the command with one line that names the server, without its credentials."""
    import os
    import signal
    import time

    from hnsel.errors import StoreError

    config, flags, _ = hostile
    host = config.store.uri.split("://", 1)[1]
    uri = f"http://root:{SECRETS[0]}@{host}"
    toml = tmp_path / "hnsel.toml"
    toml.write_text(f'[store]\nuri = "{uri}"\nnamespace = "{config.store.namespace}"\ntimeout = 2\n')
    pid = _listening_pid(int(host.rsplit(":", 1)[1]))
    with open_store(StoreConfig(uri=uri, namespace=config.store.namespace, timeout=2.0)) as store:
        store.count("images")
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="did not answer within 2 s") as info:
                store.count("images")
            assert time.monotonic() - started < 60  # far under the ~85 s of pymilvus's own retries, with room for busy cores
            res = invoke(["status", "--config", toml])
        finally:
            os.kill(pid, signal.SIGCONT)
    assert SECRETS[0] not in str(info.value) and "check that the server is running" in str(info.value)
    one_line_error(res, f"Milvus at http://{host}")
    assert SECRETS[0] not in res.stderr


@pytest.mark.server
@pytest.mark.parametrize("hostile", ["server"], indirect=True)  # credentials go in a server URI
def test_credentials_in_the_uri_and_tokens_are_never_recorded_or_printed(hostile, tmp_path, monkeypatch):
    """Every command of this module ran on the server with root:PASSWORD1@ in the URI and --token root:TOKEN2; here
    the token also comes from the environment and hnsel.toml. None of them is in a record or an output."""
    config, flags, store = hostile
    monkeypatch.setenv("HNSEL_MILVUS_TOKEN", f"root:{SECRETS[2]}")
    toml = tmp_path / "hnsel.toml"
    toml.write_text(f'[store]\ntoken = "root:{SECRETS[3]}"\n')
    plain = [a for a in flags if "TOKEN" not in a and a != "--token"]
    outputs = [invoke(["round", "show", *flags, "--round", 1, "--json"]), invoke(["status", *plain]), invoke(["round", "list", *plain, "--config", toml]),
               invoke(["select", *plain, "--config", toml, "--budget", 1])]  # records round 3 (round 1 was released)
    assert [r.exit_code for r in outputs] == [0, 0, 0, 0], [r.output for r in outputs]
    host = config.store.uri.split("://", 1)[1]
    assert json.loads(outputs[0].stdout)["config"]["store"]["uri"] == f"http://{host}"
    store.sync()
    recorded = json.dumps({k: store.get_meta(k) for k in store.meta_keys()})
    assert '"round": 3' in recorded and f"http://{host}" in recorded  # the URI is recorded, its userinfo is not
    for secret in SECRETS:
        assert secret not in recorded and not any(secret in r.output + r.stderr for r in outputs), secret
