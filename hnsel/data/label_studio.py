"""Label Studio over plain HTTP: the few calls ``hnsel annotate push|pull`` need, and image URLs it can serve.

No SDK: ``label-studio-sdk`` pins numpy and friends below what the rest of hnsel uses, and six REST calls are
all there is to it (projects, local-files storages, task import, JSON export). No store access here.

Image URLs: Label Studio opens an image by URL in the annotator's browser, so a local path means nothing to it.
``ImageUrls`` maps each stored uri: http(s) and other URLs stay as they are; a local file becomes
``/data/local-files/?d=<path under the document root>`` (Label Studio's local-files storage, served when it runs
with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``), or, with a
``url_prefix``, that prefix followed by the same relative path (images on a web server of your own).
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ..errors import HnselError
from .images import is_remote

__all__ = ["LabelStudioError", "LabelStudio", "ImageUrls", "storage_covers", "LOCAL_FILES_PATH", "DEFAULT_DOCUMENT_ROOT"]

LOCAL_FILES_PATH = "/data/local-files/?d="
DEFAULT_DOCUMENT_ROOT = os.path.abspath(os.sep)  # Label Studio's own default for LOCAL_FILES_DOCUMENT_ROOT
PAGE_SIZE = 100


class LabelStudioError(HnselError):
    """Label Studio cannot be reached, refused the API key, or refused a request."""


@dataclass
class ImageUrls:
    """Stored image uri -> a URL Label Studio can open; ``folders`` collects the local folders it must serve."""

    document_root: str = DEFAULT_DOCUMENT_ROOT
    url_prefix: str = ""
    folders: set[str] = field(default_factory=set)

    def __call__(self, image_id: str, uri: str) -> str:
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        if not uri or is_remote(uri):
            return uri
        path = os.path.abspath(uri)
        root = os.path.abspath(self.document_root)
        relative = os.path.relpath(path, root)
        if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
            where = "--url-prefix's" if self.url_prefix else "Label Studio's"
            raise LabelStudioError(f"image {image_id!r}: {path} is outside {where} document root {root}; give a --document-root "
                                   "(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) that holds every image")
        relative = relative.replace(os.sep, "/")
        if self.url_prefix:
            return f"{self.url_prefix.rstrip('/')}/{urllib.parse.quote(relative)}"
        self.folders.add(os.path.dirname(path))
        return LOCAL_FILES_PATH + urllib.parse.quote(relative)

    def storage_paths(self) -> list[str]:
        """The fewest folders that hold every local image seen (a folder inside another is left out)."""
        out: list[str] = []
        for folder in sorted(self.folders):
            if not any(folder == held or folder.startswith(held.rstrip(os.sep) + os.sep) for held in out):
                out.append(folder)
        return out


class LabelStudio:
    """A Label Studio server at ``url`` with an API key: a legacy token, or a personal access token (a JWT refresh
    token, exchanged once for an access token)."""

    def __init__(self, url: str, api_key: str, timeout: float = 120.0):
        if not url:
            raise LabelStudioError("no Label Studio URL; pass --url, set LABEL_STUDIO_URL, or [label_studio] url in hnsel.toml")
        if not api_key:
            raise LabelStudioError(f"no API key for Label Studio at {url}; pass --api-key, set LABEL_STUDIO_API_KEY, or [label_studio] "
                                   "api_key in hnsel.toml (Label Studio: Account & Settings, Access Token)")
        self.url, self.timeout = url.rstrip("/"), timeout
        self._auth = f"Token {api_key}"
        if api_key.count(".") == 2:  # a personal access token is a JWT refresh token
            self._auth = f"Bearer {self.request('POST', '/api/token/refresh', {'refresh': api_key}, auth=False)['access']}"

    def request(self, method: str, path: str, body: Any = None, *, query: dict | None = None, auth: bool = True) -> Any:
        """One JSON call; any failure is one ``LabelStudioError`` line naming the server and what to do."""
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"} | ({"Authorization": self._auth} if auth else {})
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(method, path, exc) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({_one_line(reason)}); start it (label-studio start) "
                                   "or fix --url / LABEL_STUDIO_URL") from None
        try:
            return json.loads(payload) if payload else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LabelStudioError(f"{self.url}{path} did not answer JSON; is {self.url} a Label Studio server?") from None

    def _refused(self, method: str, path: str, exc: urllib.error.HTTPError) -> LabelStudioError:
        detail = _detail(exc.read())
        if exc.code == 401 or (exc.code == 403 and path.startswith("/api/current-user")):
            return LabelStudioError(f"Label Studio at {self.url} refused the API key ({exc.code}); copy the token from Account & Settings "
                                    "into --api-key or LABEL_STUDIO_API_KEY")
        if exc.code == 404 and path.startswith("/api/") and "detail" not in detail.lower() and "<html" in detail.lower():
            return LabelStudioError(f"{self.url} answered 404 for {path}; is it a Label Studio server (version 1.8 or later)?")
        return LabelStudioError(f"Label Studio at {self.url} refused {method} {path} ({exc.code}: {detail})")

    # --- the calls hnsel makes -------------------------------------------------------------------------------------------
    def whoami(self) -> dict:
        return self.request("GET", "/api/current-user/whoami")

    def projects(self, title: str = "") -> list[dict]:
        """Projects (id, title) visible to the key's user, optionally those whose title contains ``title``."""
        out, page = [], 1
        while True:
            got = self.request("GET", "/api/projects/", query={"page": page, "page_size": PAGE_SIZE, **({"title": title} if title else {})})
            results = got.get("results", []) if isinstance(got, dict) else got
            out.extend(results)
            if not isinstance(got, dict) or not got.get("next") or not results:
                return out
            page += 1

    def project(self, project_id: int) -> dict:
        return self.request("GET", f"/api/projects/{project_id}/")

    def create_project(self, title: str, label_config: str, description: str = "") -> dict:
        return self.request("POST", "/api/projects/", {"title": title, "label_config": label_config, "description": description})

    def local_storages(self, project_id: int) -> list[dict]:
        return self.request("GET", "/api/storages/localfiles", query={"project": project_id}) or []

    def add_local_storage(self, project_id: int, path: str, title: str) -> dict:
        """A local-files storage for ``path``, never synced: it only lets the project's tasks show the files under it."""
        return self.request("POST", "/api/storages/localfiles", {"project": project_id, "path": path, "title": title[:256], "use_blob_urls": True})

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        if not tasks:
            return 0
        got = self.request("POST", f"/api/projects/{project_id}/import", tasks, query={"return_task_ids": "false"})
        return int(got.get("task_count", len(tasks))) if isinstance(got, dict) else len(tasks)

    def export_tasks(self, project_id: int, all_tasks: bool = False) -> list:
        """The project's tasks in Label Studio's JSON export shape: those with annotations, or all of them."""
        return self.request("GET", f"/api/projects/{project_id}/export",
                            query={"exportType": "JSON", "download_all_tasks": "true" if all_tasks else "false"})


def _detail(body: bytes) -> str:
    """What Label Studio said: its validation messages, else its ``detail``, else the start of the body."""
    try:
        answer = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _one_line(body[:400].decode("utf-8", "replace"))
    if isinstance(answer, dict) and answer.get("validation_errors"):
        errors = answer["validation_errors"]
        return _one_line("; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" if k != "non_field_errors" else
                                   " ".join(map(str, v)) for k, v in errors.items()) if isinstance(errors, dict) else errors)
    return _one_line(answer.get("detail", answer) if isinstance(answer, dict) else answer)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:500]


def storage_covers(storage_path: str, folder: str) -> bool:
    """True when ``folder`` is ``storage_path`` or inside it (Label Studio's own permission rule for local files)."""
    held = posixpath.normpath(storage_path)
    return folder == held or folder.startswith(held.rstrip("/") + "/")
