"""``hnsel annotate push|pull``: a round's picks as tasks of a Label Studio project, and its finished annotations back.

``push_round`` creates (or reuses, by title or id) a project with hnsel's labeling config, lets it serve the local
images through a Local Files storage (never synced: the tasks are hnsel's, one per pick) or names them by a URL
prefix, and adds a task for each pick the project does not hold yet, so pushing twice adds nothing. ``pull_round``
exports the project's annotated tasks and imports them exactly as ``hnsel annotate import`` imports a file: all or
nothing, and a second pull writes nothing. Tasks nobody has finished are left for a later pull.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import HnselConfig
from ..data.annotator_files import LABEL_CONFIGS, label_studio_annotations
from ..data.label_studio import LabelStudio, LabelStudioError, storage_covers
from .annotate import ImportReport, image_urls, import_rows, label_studio_tasks, round_samples

__all__ = ["push_round", "PushReport", "pull_round", "PullReport", "project_title"]

TITLE_MAX = 50  # Label Studio's PROJECT_TITLE_MAX_LEN
SAMPLE_KEY = {"image": "image_id", "text": "text_id"}
RESULT_NAME = {"image": "caption", "text": "image_id"}  # the text area whose answers hnsel reads


@dataclass
class PushReport:
    round: int
    modality: str
    url: str
    project_id: int
    project_title: str
    project_created: bool
    tasks_added: int
    tasks_already: int
    storages_added: list[str] = field(default_factory=list)


@dataclass
class PullReport:
    url: str
    project_id: int
    project_title: str
    tasks_annotated: int
    imported: ImportReport

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "imported"} | {"imported": self.imported.summary()}


def project_title(config: HnselConfig, number: int) -> str:
    """The project a round is pushed to unless ``--project`` says otherwise."""
    return f"hnsel {config.store.namespace} round {number}"


def connect(config: HnselConfig, url: str | None = None, api_key: str | None = None) -> LabelStudio:
    """A checked connection: the server answers and accepts the key (else one line saying what to do)."""
    settings = config.label_studio
    client = LabelStudio(url or settings.url, api_key or settings.api_key, timeout=max(config.store.timeout, 30.0))
    client.whoami()
    return client


def push_round(config: HnselConfig, number: int, *, url: str | None = None, api_key: str | None = None, project: str | None = None,
               document_root: str | None = None, url_prefix: str | None = None, include_annotated: bool = False) -> PushReport:
    """Round ``number``'s samples awaiting annotation as tasks of a Label Studio project (see the module docstring)."""
    modality, rows = round_samples(config, number, include_annotated)
    urls = image_urls(config, document_root, url_prefix)
    tasks = label_studio_tasks(number, modality, rows, urls)  # every uri is checked before Label Studio is touched
    client = connect(config, url, api_key)
    found = _find_project(client, project or project_title(config, number))
    created = found is None
    if created and not tasks:
        raise LabelStudioError(f"round {number} has no samples awaiting annotation, so no project was made; --include-annotated "
                               "sends the annotated ones too")
    if created:
        found = client.create_project(_checked_title(project or project_title(config, number)), LABEL_CONFIGS[modality],
                                      f"hnsel round {number} ({modality} modality) of namespace {config.store.namespace}")
    _check_config(found, modality)
    report = PushReport(number, modality, client.url, int(found["id"]), str(found.get("title", "")), created, 0, 0)
    try:
        report.storages_added = _serve_folders(client, report.project_id, urls.storage_paths(), urls.document_root)
        key = SAMPLE_KEY[modality]
        held = {t["data"].get(key) for t in client.export_tasks(report.project_id, all_tasks=True) if isinstance(t.get("data"), dict)}
        new = [t for t in tasks if t["data"][key] not in held]
        report.tasks_added, report.tasks_already = client.import_tasks(report.project_id, new), len(tasks) - len(new)
    except LabelStudioError:
        if created:  # a refused push leaves no empty project behind
            client.request("DELETE", f"/api/projects/{report.project_id}/")
        raise
    return report


def pull_round(config: HnselConfig, number: int | None = None, *, url: str | None = None, api_key: str | None = None,
               project: str | None = None, encoder: Any = None, model_name: str | None = None, pretrained: str | None = None,
               device: str = "auto") -> PullReport:
    """The finished annotations of round ``number``'s project (or ``project``: a title or id) imported into the store."""
    if project is None and number is None:
        raise LabelStudioError("say which project to pull: --round N (the project hnsel annotate push made) or --project TITLE|ID")
    client = connect(config, url, api_key)
    wanted = project or project_title(config, int(number))  # type: ignore[arg-type]
    found = _find_project(client, wanted)
    if found is None:
        raise LabelStudioError(f"Label Studio at {client.url} has no project {wanted!r}; push the round first (hnsel annotate push) "
                               "or name the project with --project")
    pid = int(found["id"])
    tasks = client.export_tasks(pid)
    source = f"Label Studio project {pid} ({found.get('title', '')!s})"
    modality, rows = label_studio_annotations(tasks, source)
    if not rows:
        modality = next((m for m, name in RESULT_NAME.items() if f'name="{name}"' in str(found.get("label_config", ""))), "image")
    imported = import_rows(config, f"{client.url}/projects/{pid}", modality, rows, encoder=encoder, model_name=model_name,
                           pretrained=pretrained, device=device)
    return PullReport(client.url, pid, str(found.get("title", "")), len({a.where for a in rows}), imported)


def _find_project(client: LabelStudio, wanted: str) -> dict | None:
    """The project whose id (all digits) or exact title is ``wanted``; ``None`` when no project has that title."""
    if wanted.isdigit():
        return client.project(int(wanted))
    same = [p for p in client.projects(wanted) if p.get("title") == wanted]
    if len(same) > 1:
        raise LabelStudioError(f"Label Studio at {client.url} has {len(same)} projects titled {wanted!r} (ids "
                               f"{', '.join(str(p['id']) for p in same)}); pass --project ID")
    return client.project(int(same[0]["id"])) if same else None


def _checked_title(title: str) -> str:
    if not 3 <= len(title) <= TITLE_MAX:
        raise LabelStudioError(f"project title {title!r} has {len(title)} characters; Label Studio takes 3 to {TITLE_MAX}: pass a "
                               "shorter --project")
    return title


def _check_config(project: dict, modality: str) -> None:
    """A reused project must have the text area hnsel reads back, or its annotations would never come back."""
    name = RESULT_NAME[modality]
    if f'name="{name}"' not in str(project.get("label_config", "")):
        raise LabelStudioError(f"Label Studio project {project.get('id')} ({project.get('title', '')}) has no {name!r} text area, so "
                               f"its annotations cannot be read back as a {modality}-modality round; push to a new project "
                               "(--project NEW-TITLE)")


def _serve_folders(client: LabelStudio, project_id: int, folders: list[str], document_root: str) -> list[str]:
    """A Local Files storage for each image folder no storage of the project covers yet; the paths added."""
    held = [str(s.get("path", "")) for s in client.local_storages(project_id)]
    added = []
    for folder in folders:
        if any(storage_covers(path, folder) for path in held):
            continue
        try:
            client.add_local_storage(project_id, folder, f"hnsel images {folder}")
        except LabelStudioError as exc:
            raise LabelStudioError(f"{exc}; Label Studio serves local images when it runs with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                                   f"and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={document_root} (a folder above the images, not the "
                                   "images folder itself), or pass --url-prefix") from None
        held.append(folder)
        added.append(folder)
    return added
