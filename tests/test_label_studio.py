"""Label Studio: task files whose image URLs it can serve, ids refused unless they are strings, and ``hnsel annotate
push|pull`` against a real ``label-studio start`` process, with annotations made through its API.

The server is the PyPI ``label-studio`` in its own virtual environment (``.venv-ls``, made by ``make test``: it pins
Django, numpy and more below what hnsel's venv holds). One process serves the whole session: its first start migrates
a new SQLite database, which takes minutes on two busy cores. Set ``HNSEL_LABEL_STUDIO`` to the ``label-studio``
executable to use another install. Without one the server tests are skipped, and fail under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.config import HnselConfig, LabelStudioConfig, StoreConfig, load_config
from hnsel.errors import InputError
from hnsel.store import open_store
from hnsel.data.synthetic import make_pool, write_pool

from test_annotate import DIM, MODEL, FakeEncoder, snapshot

START_TIMEOUT = 900.0  # seconds: migrating a new database took ~5 min at a load average of 25 on 2 cores
STOP_TIMEOUT = 30.0
TOKEN = os.environ.get("HNSEL_TEST_LABEL_STUDIO_TOKEN", "hnsel-test-token-0123456789")
ROOT = Path(__file__).resolve().parent.parent


# --- the server ---------------------------------------------------------------------------------------------------------------
def _find_label_studio() -> str:
    for exe in (os.environ.get("HNSEL_LABEL_STUDIO"), str(ROOT / ".venv-ls" / "bin" / "label-studio"), shutil.which("label-studio")):
        if exe and Path(exe).is_file():
            return exe
    why = "label-studio is not installed (make test puts it in .venv-ls; or set HNSEL_LABEL_STUDIO)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {why}: CI must run the Label Studio tests", pytrace=False)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _whoami(url: str) -> bool:
    request = urllib.request.Request(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status == 200
    except OSError:  # refused while it migrates, or a timeout while it is busy
        return False


def _serving_at(log: Path, asked: str) -> str:
    """The URL the server says it serves: ``label-studio start`` moves to the next port when the one asked for was taken
    meanwhile (by another process on a busy machine)."""
    said = re.search(r"Starting development server at (http://[\d.]+:\d+)", log.read_text(errors="replace"))
    return said.group(1) if said else asked


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we made: the server and anything it started
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """(url, document root) of a Label Studio that lives for the session; its local-files root is a temporary folder.
    ``HNSEL_TEST_LABEL_STUDIO=URL,DOCUMENT_ROOT`` uses a server you started (with the user token ``TOKEN``) instead."""
    given = os.environ.get("HNSEL_TEST_LABEL_STUDIO")
    if given:
        url, _, root = given.partition(",")
        yield url, Path(root)
        return
    exe = _find_label_studio()
    base = tmp_path_factory.mktemp("label-studio")
    root = base / "files"
    root.mkdir()
    url = f"http://127.0.0.1:{_free_port()}"
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "LABEL_STUDIO_LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_COLLECT_ANALYTICS": "false", "PYTHONUNBUFFERED": "1", "HOME": str(base)}
    args = [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--data-dir", str(base / "data"),
            "--username", "hnsel@example.com", "--password", "hnsel-test-password", "--user-token", TOKEN, "--enable-legacy-api-token"]
    log = base / "label-studio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not _whoami(url := _serving_at(log, url)):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                why = f"exited with code {proc.returncode}" if proc.poll() is not None else f"did not answer within {START_TIMEOUT:.0f} s"
                pytest.fail(f"label-studio start {why}; its log ({log}) ends:\n{tail}", pytrace=False)
            time.sleep(2)
        yield url, root
    finally:
        _stop(proc)


def ls_call(url: str, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=120) as response:
        payload = response.read()
    return payload if path.startswith("/data/") else json.loads(payload or b"null")  # files as bytes; the API answers JSON


def personal_token(url: str) -> str:
    """The user's personal access token, made now (a server started by ``HNSEL_TEST_LABEL_STUDIO`` may hold one already,
    which cannot be read back: then the legacy token)."""
    try:
        return ls_call(url, "POST", "/api/token/", {})["token"]
    except urllib.error.HTTPError as exc:
        if exc.code == 409 and os.environ.get("HNSEL_TEST_LABEL_STUDIO"):
            return TOKEN
        raise


def annotate(url: str, task_id: int, *captions: str, cancelled: bool = False) -> None:
    """An annotation made as a person would submit it: the caption text area's texts (or a skip)."""
    result = [{"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": list(captions)}}]
    ls_call(url, "POST", f"/api/tasks/{task_id}/annotations", {"result": result, "was_cancelled": cancelled})


def project_tasks(url: str, project_id: int) -> dict[str, dict]:
    """image_id -> task, as Label Studio holds them."""
    tasks = ls_call(url, "GET", f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true")
    return {t["data"]["image_id"]: t for t in tasks}


# --- a store whose unpaired images are real files under the server's document root -------------------------------------------
def photo_store(tmp_path: Path, root: Path, name: str) -> tuple[HnselConfig, list[str], Path]:
    """A store with a model record and round 1 (6 images picked), the images PNG files in ``root/name`` (a space and a
    non-ASCII letter in each file name, so URLs must be quoted)."""
    tmp_path.mkdir(exist_ok=True)
    pool = make_pool(n_paired=10, n_unpaired=30, captions_per_image=2, dim=DIM, n_coarse=3, fine_per_coarse=3, seed=7)
    images, texts = write_pool(pool, tmp_path / "pool")
    name = f"{name}_{uuid.uuid4().hex[:8]}"  # a session's server is shared: each test has its own folder, namespace and projects
    folder = root / name
    folder.mkdir()
    table = pq.read_table(images)
    uris = []
    for k, image_id in enumerate(table.column("id").to_pylist()):
        path = folder / f"{image_id} phöto.png"
        Image.new("RGB", (8, 8), (k * 6 % 256, 40, 90)).save(path)
        uris.append(str(path))
    pq.write_table(table.set_column(table.schema.get_field_index("uri"), "uri", pa.array(uris)), images)
    config = HnselConfig(store=StoreConfig(uri=str(tmp_path / "h.db"), namespace=name))
    api.ingest(config, images=images, texts=texts)
    with open_store(config.store) as store:
        store.set_meta("model", MODEL)
    picked = list(api.select(config, budget=6, strategy="hardneg", seed=0, record=True).selection.ids)
    return config, picked, folder


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


# --- no server needed ---------------------------------------------------------------------------------------------------------
def test_export_names_local_images_by_urls_label_studio_serves(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    config, picked, folder = photo_store(tmp_path, root, "photos")
    db = ("--milvus-uri", config.store.uri, "--namespace", config.store.namespace)
    code, out, err = cli("annotate", "export", "--round", 1, "--format", "label-studio", "--out", tmp_path / "t.json", "--document-root", root, *db)
    assert code == 0, err
    tasks = json.loads((tmp_path / "t.json").read_text())
    assert sorted(t["data"]["image_id"] for t in tasks) == sorted(picked)
    for task in tasks:  # the path under the document root, quoted as Label Studio's own local-files storage writes it
        name = f"{folder.name}/{task['data']['image_id']} phöto.png"
        assert task["data"]["image"] == "/data/local-files/?d=" + urllib.parse.quote(name)
        assert (root / urllib.parse.unquote(task["data"]["image"].partition("?d=")[2])).is_file()
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}" in out and f"storage (not synced) for {folder}" in out
    # a prefix of your own web server instead
    api.export_round(config, 1, "label-studio", tmp_path / "p.json", document_root=str(root), url_prefix="https://img.example.com/set/")
    first = json.loads((tmp_path / "p.json").read_text())[0]["data"]
    assert first["image"] == f"https://img.example.com/set/{folder.name}/{first['image_id']}%20ph%C3%B6to.png"
    # the default root is Label Studio's own default, /; hnsel.toml and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set another
    api.export_round(config, 1, "label-studio", tmp_path / "d.json")
    assert json.loads((tmp_path / "d.json").read_text())[0]["data"]["image"].startswith("/data/local-files/?d=" + urllib.parse.quote(str(root).lstrip("/")))
    (tmp_path / "empty.toml").write_text("")
    env_config = load_config(tmp_path / "empty.toml", env={"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(folder)})
    api.export_round(env_config.with_overrides(uri=config.store.uri, namespace=config.store.namespace), 1, "label-studio", tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text())[0]["data"]["image"] == f"/data/local-files/?d={sorted(picked)[0]}%20ph%C3%B6to.png"


def test_images_outside_the_document_root_are_refused_in_one_line(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    config, picked, _ = photo_store(tmp_path, root, "photos")
    other = tmp_path / "elsewhere"
    other.mkdir()
    code, out, err = cli("annotate", "export", "--round", 1, "--format", "label-studio", "--out", tmp_path / "t.json", "--document-root", other,
                         "--milvus-uri", config.store.uri, "--namespace", config.store.namespace)
    assert code == 1 and "is outside Label Studio's document root" in err and f"image '{sorted(picked)[0]}'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("value, shown", [(None, "null"), (5, "a number (5)"), (["a"], "a list"), ("", "an empty string"), (True, "a boolean (True)")])
def test_label_studio_ids_that_are_not_strings_are_refused_naming_the_task(tmp_path, value, shown):
    tasks = [{"id": 11, "data": {"image": "x", "image_id": "img000"}, "annotations": [{"result": [
        {"from_name": "caption", "value": {"text": ["a cat"]}}]}]},
             {"id": 12, "data": {"image": "x", "image_id": value}, "annotations": [{"result": [{"from_name": "caption", "value": {"text": ["a dog"]}}]}]}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    code, out, err = cli("annotate", "import", path, "--milvus-uri", tmp_path / "h.db")
    assert code == 1 and f"task 2 (Label Studio id 12): data.image_id is {shown}, not an id" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h.db").exists()  # refused before the store was opened


def test_label_studio_config_section_and_environment(tmp_path):
    toml = tmp_path / "hnsel.toml"
    toml.write_text('[label_studio]\nurl = "http://ls:8080"\napi_key = "k1"\ndocument_root = "/data"\n')
    assert load_config(toml, env={}).label_studio == LabelStudioConfig("http://ls:8080", "k1", "/data", "")
    got = load_config(toml, env={"LABEL_STUDIO_URL": "http://other:1", "LABEL_STUDIO_API_KEY": "k2"}).label_studio
    assert (got.url, got.api_key, got.document_root) == ("http://other:1", "k2", "/data")
    toml.write_text('[label_studio]\napi_key = 5\n')
    code, _, err = cli("status", "--config", toml)
    assert code == 1 and "[label_studio]: api_key must be a string" in err


def test_push_and_pull_say_in_one_line_when_the_server_is_unreachable(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    config, _, _ = photo_store(tmp_path, root, "photos")
    before = snapshot(config)
    dead = f"http://127.0.0.1:{_free_port()}"
    for command in (("push", "--document-root", root), ("pull",)):
        code, out, err = cli("annotate", *command, "--round", 1, "--url", dead, "--api-key", "x", "--milvus-uri", config.store.uri,
                             "--namespace", config.store.namespace)
        assert code == 1 and f"cannot reach Label Studio at {dead}" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("annotate", "pull", "--round", 1, "--milvus-uri", config.store.uri, "--namespace", config.store.namespace, "--api-key", "x")
    assert code == 1 and "no Label Studio URL" in err
    assert snapshot(config) == before


# --- against a real server ----------------------------------------------------------------------------------------------------
def test_push_pull_round_trip_against_a_real_label_studio(tmp_path, label_studio):
    url, root = label_studio
    config, picked, folder = photo_store(tmp_path, root, "roundtrip")
    db = ("--milvus-uri", config.store.uri, "--namespace", config.store.namespace, "--url", url, "--api-key", TOKEN)
    code, out, err = cli("annotate", "push", "--round", 1, "--document-root", root, *db)
    assert code == 0 and "6 tasks added (0 already there)" in out and "(created)" in out and f"local files storage added for {folder}" in out, err
    # again, with a personal access token (a JWT refresh token: what Label Studio hands out unless legacy tokens are on)
    code, out, err = cli("annotate", "push", "--round", 1, "--document-root", root, "--json", *db[:-1], personal_token(url))
    again = json.loads(out)
    assert (again["tasks_added"], again["tasks_already"], again["project_created"], again["storages_added"]) == (0, 6, False, [])
    assert again["project_title"] == f"hnsel {config.store.namespace} round 1"
    tasks = project_tasks(url, again["project_id"])
    assert sorted(tasks) == sorted(picked) and all(t["data"]["round"] == 1 for t in tasks.values())
    for image_id in picked[:2]:  # Label Studio itself serves each task's image, byte for byte
        assert ls_call(url, "GET", tasks[image_id]["data"]["image"]) == (folder / f"{image_id} phöto.png").read_bytes()

    before = snapshot(config)
    nothing = api.pull_round(config, 1, url=url, api_key=TOKEN, encoder=FakeEncoder())
    assert (nothing.tasks_annotated, nothing.imported.texts_written) == (0, 0) and snapshot(config) == before
    annotate(url, tasks[picked[0]]["id"], "a red circle", "a circle, red")
    annotate(url, tasks[picked[1]]["id"], "two squares")
    annotate(url, tasks[picked[2]]["id"], "not this one", cancelled=True)  # skipped: nothing comes back for it
    first = api.pull_round(config, 1, url=url, api_key=TOKEN, encoder=FakeEncoder())
    assert (first.tasks_annotated, first.imported.texts_written, first.imported.images_paired) == (2, 3, 2)
    with open_store(config.store) as store:
        pools = {r["id"]: r["pool"] for r in store.get("images", picked, ["id", "pool"])}
        texts = store.get("texts", [f"{picked[1]}#{__import__('hashlib').sha1(b'two squares').hexdigest()[:16]}"], ["text", "image_id", "vector"])
    assert [pools[i] for i in picked[:3]] == ["paired", "paired", "unpaired"]
    assert (texts[0]["text"], texts[0]["image_id"]) == ("two squares", picked[1])
    np.testing.assert_allclose(texts[0]["vector"], FakeEncoder().encode_texts(["two squares"])[0], atol=1e-6)

    after = snapshot(config)  # a second pull (here through the CLI: nothing new, so no model is loaded) writes nothing
    code, out, err = cli("annotate", "pull", "--round", 1, "--json", *db)
    second = json.loads(out)["imported"]
    assert code == 0 and (second["texts_written"], second["texts_unchanged"], second["images_paired"]) == (0, 3, 0) and snapshot(config) == after
    annotate(url, tasks[picked[3]]["id"], "a green triangle")  # annotators go on: the next pull takes only what is new
    third = api.pull_round(config, 1, url=url, api_key=TOKEN, encoder=FakeEncoder())
    assert (third.tasks_annotated, third.imported.texts_written, third.imported.texts_unchanged, third.imported.images_paired) == (3, 1, 3, 1)
    rounds = json.loads(cli("round", "list", "--json", "--milvus-uri", config.store.uri, "--namespace", config.store.namespace)[1])
    assert [(r["round"], r["annotated"], r["pending"]) for r in rounds] == [(1, 3, 3)]


def test_label_studio_refusals_are_one_line_and_write_nothing(tmp_path, label_studio):
    url, root = label_studio
    config, picked, folder = photo_store(tmp_path, root, "refusals")
    db = ("--milvus-uri", config.store.uri, "--namespace", config.store.namespace, "--url", url)
    before = snapshot(config)
    cases = [
        (("push", "--round", 1, "--document-root", root, "--api-key", "not-the-token"), "refused the API key (401)"),
        (("pull", "--round", 1, "--api-key", TOKEN), f"has no project 'hnsel {config.store.namespace} round 1'; push the round first"),
        (("push", "--round", 1, "--document-root", root, "--api-key", TOKEN, "--project", "999999"), "refused GET /api/projects/999999/ (404"),
    ]
    for args, message in cases:
        code, out, err = cli("annotate", *args, *db)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)
    assert snapshot(config) == before
    # images Label Studio may not serve (outside its document root): refused by it, and the project just made is removed
    outside, _, _ = photo_store(tmp_path / "outside", tmp_path / "outside", "outside")
    code, out, err = cli("annotate", "push", "--round", 1, "--document-root", tmp_path / "outside", "--api-key", TOKEN, "--url", url,
                         "--milvus-uri", outside.store.uri, "--namespace", outside.store.namespace)
    assert code == 1 and "must be a subdirectory of LOCAL_FILES_DOCUMENT_ROOT" in err and len(err.strip().splitlines()) == 1, err
    assert not [p for p in ls_call(url, "GET", "/api/projects/?page_size=1000")["results"] if outside.store.namespace in p["title"]]
    # an id Label Studio hands back as a number (a task edited by hand) is refused naming the task; nothing is written
    pushed = api.push_round(config, 1, url=url, api_key=TOKEN, document_root=str(root), project=f"numbers {config.store.namespace}")
    task = project_tasks(url, pushed.project_id)[picked[0]]
    ls_call(url, "PATCH", f"/api/tasks/{task['id']}", {"data": dict(task["data"], image_id=5)})
    annotate(url, task["id"], "a cat")
    with pytest.raises(InputError, match=rf"Label Studio project {pushed.project_id} \(numbers {config.store.namespace}\), task 1 \(Label Studio id {task['id']}\): "
                                         r"data.image_id is a number \(5\)"):
        api.pull_round(config, url=url, api_key=TOKEN, project=f"numbers {config.store.namespace}", encoder=FakeEncoder())
    assert snapshot(config) == before
    # a round with nothing left to annotate makes no empty project
    api.release(config, 1)
    code, out, err = cli("annotate", "push", "--round", 1, "--document-root", root, "--api-key", TOKEN, *db)
    assert code == 1 and "round 1 has no samples awaiting annotation, so no project was made" in err
    assert not [p for p in ls_call(url, "GET", "/api/projects/?page_size=1000")["results"] if p["title"] == f"hnsel {config.store.namespace} round 1"]


def test_a_text_round_goes_through_label_studio_too(tmp_path, label_studio):
    """Text modality: each task shows a picked caption, the annotator types the id of the image it describes."""
    url, root = label_studio
    config, _, _ = photo_store(tmp_path, root, "texts")
    extra = np.random.default_rng(3).normal(size=(12, DIM))
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i:02d}", "vector": v.tolist(), "pool": "unpaired", "text": f"query {i}"}) + "\n"
                               for i, v in enumerate(extra)))
    api.ingest(config, texts=queries, model_name=MODEL["model_name"])  # the store holds that model's vectors
    picked = list(api.select(config, budget=3, strategy="random", modality="text", seed=0, record=True).selection.ids)
    pushed = api.push_round(config, 2, url=url, api_key=TOKEN)
    assert (pushed.modality, pushed.tasks_added, pushed.storages_added) == ("text", 3, [])
    tasks = {t["data"]["text_id"]: t for t in ls_call(url, "GET", f"/api/projects/{pushed.project_id}/export?exportType=JSON&download_all_tasks=true")}
    assert sorted(tasks) == sorted(picked) and tasks[picked[0]]["data"]["text"].startswith("query")
    result = [{"from_name": "image_id", "to_name": "caption", "type": "textarea", "value": {"text": ["img03"]}}]
    ls_call(url, "POST", f"/api/tasks/{tasks[picked[0]]['id']}/annotations", {"result": result})
    pulled = api.pull_round(config, 2, url=url, api_key=TOKEN)
    assert (pulled.imported.modality, pulled.imported.texts_written, pulled.tasks_annotated) == ("text", 1, 1)
    with open_store(config.store) as store:
        assert [(r["pool"], r["image_id"]) for r in store.get("texts", [picked[0]], ["pool", "image_id"])] == [("paired", "img03")]
