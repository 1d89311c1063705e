"""Active-learning simulation with an oracle (``hnsel simulate``): does a strategy's selection pay off?

A fully captioned source is split into a pool (``split``, default train) and a fixed test split. The
pool's captions are hidden except for an initial paired fraction (``init``, drawn from the seed, the
same for every strategy). Each round: train heads on the paired images' backbone features and their
captions (head mode), evaluate Recall@K and R-sum on the test split, write every pool vector through
the round's heads into a Milvus store (one namespace per strategy and seed), pick ``budget`` unpaired
images with ``hnsel.api.select`` (exactly what users run) and reveal their captions (the oracle). The
last round only trains and evaluates. Backbone features are computed once (``hnsel.model.features`` cache).

``OUT/results.json`` is rewritten atomically after every round, so an interrupted run resumes from its
last finished round; ``results.md`` (mean and standard deviation over seeds) and ``rsum.png`` are
written at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..config import HnselConfig
from ..data import load_source
from ..model.encoder import load_encoder
from ..schema import DEFAULT_CACHE_DIR, DEFAULT_PRETRAINED, MATCH_META_KEY, ProgressFn
from ..errors import ConfigError, InputError
from ..model.metrics import evaluate_recall
from ..model.features import backbone_features
from ..model.losses import parse_loss
from ..store import open_store
from ..strategies import get_strategy
from ..strategies.guard import DEDUP_PARAM, check_radius
from ..tables import write_text_atomic
from ..model.train import apply_heads, head_uncertainty, train_heads
from .select import select
from .train import Paired, paired_from_dataset

__all__ = ["simulate", "SimulateReport", "StrategySpec", "parse_strategy", "summarise", "markdown_table", "write_reports",
           "RESULTS_NAME", "TIME_KEYS"]

RESULTS_NAME = "results.json"
TIME_KEYS = ("train_seconds", "eval_seconds", "embed_seconds", "select_seconds")


@dataclass(frozen=True)
class StrategySpec:
    """``label`` as given (``hardneg:k=5,weight=count``), the registered ``name`` and its ``params``."""

    label: str
    name: str
    params: dict


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_strategy(text: str) -> StrategySpec:
    """``name`` or ``name:key=value,key=value``; checked against the registry (one-line SelectionError). ``dedup_radius=R``
    is not the strategy's: it turns on the near-duplicate guard (``strategies.guard``) for that entry."""
    name, _, rest = text.strip().partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--strategies {text!r}: write parameters as name:key=value,key=value (got {item!r})")
        params[key.strip()] = _value(value.strip())
    check_radius(params.get(DEDUP_PARAM, 0.0))
    get_strategy(name, **{k: v for k, v in params.items() if k != DEDUP_PARAM})  # unknown names and parameters fail here, before any work
    return StrategySpec(text.strip(), name, params)


@dataclass
class SimulateReport:
    out: str
    results: str
    table: str | None
    plot: str | None
    runs: list[dict] = field(default_factory=list)
    resumed_rounds: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "runs"} | {
            "final": [{"strategy": r["strategy"], "seed": r["seed"], "paired": r["rounds"][-1]["paired"],
                       "rsum": r["rounds"][-1]["metrics"]["rsum"]} for r in self.runs if r["rounds"]]}


@dataclass
class _Data:
    pool: Paired
    caption_ids: list[str]
    pool_images: np.ndarray
    pool_texts: np.ndarray
    test: Paired
    test_images: np.ndarray
    test_texts: np.ndarray
    model: dict


def _pool_of(dataset, split: str, source) -> tuple[Paired, list[str]]:
    images = [r for r in dataset.images if r.split == split and r.captions]
    if not images:
        raise InputError(f"split {split!r} has no captioned images to simulate with; pass --split", path=source)
    paired = paired_from_dataset(dataclasses.replace(dataset, images=[dataclasses.replace(r, pool="paired") for r in images]),
                                 f"split {split!r}")
    caption_ids = [cid for r in images for cid in (r.caption_ids or [f"{r.id}#{k}" for k in range(len(r.captions))])]
    return paired, caption_ids


def _dataset(source, split: str, test_split: str, images_dir, columns: dict | None = None):
    dataset = load_source(source, images_dir=images_dir, **(columns or {}))
    splits = sorted({r.split for r in dataset.images if r.split})
    if test_split not in splits or split not in splits or split == test_split:
        raise InputError(f"--split {split!r} and --test-split {test_split!r} must be two splits of the source (it has {splits or 'none'})",
                         path=source)
    return dataset


def _load_data(dataset, source, split: str, test_split: str, model_name, pretrained, device, cache_dir, on_progress) -> _Data:
    pool, caption_ids = _pool_of(dataset, split, source)
    test = paired_from_dataset(dataset.split(test_split), f"split {test_split!r}")
    encoder = load_encoder(model_name, pretrained, device)
    base = dataclasses.replace(encoder, image_head=None, text_head=None)
    pi, pt, _ = backbone_features(base, pool.uris, pool.texts, cache_dir=cache_dir, on_progress=on_progress)
    ti, tt, _ = backbone_features(base, test.uris, test.texts, cache_dir=cache_dir, on_progress=on_progress)
    return _Data(pool, caption_ids, pi, pt, test, ti, tt, dict(base.model_info))


def _check(init: float, rounds: int, budget: int, n_pool: int, seeds: Sequence[int], strategies: Sequence[StrategySpec]) -> int:
    n_init = int(round(init * n_pool))
    if not strategies or not seeds:
        raise ConfigError("give at least one --strategies entry and one --seeds value")
    if len({s.label for s in strategies}) != len(strategies) or len(set(seeds)) != len(seeds):
        raise ConfigError("--strategies and --seeds must not repeat an entry")
    if rounds < 1 or budget < 1:
        raise ConfigError(f"--rounds {rounds} / --budget {budget}: use at least one round of at least one image")
    if n_init < 2:
        raise ConfigError(f"--init {init} of {n_pool} pool images gives {n_init} paired images; training needs at least 2: raise --init")
    if n_init + rounds * budget > n_pool:
        raise ConfigError(f"--init {init} ({n_init} images) + --rounds {rounds} x --budget {budget} exceeds the {n_pool} pool images; "
                          "lower --budget or --rounds")
    return n_init


def _caption_rows(pool: Paired) -> list[np.ndarray]:
    """Per pool image, the row numbers of its captions."""
    order = np.argsort(pool.text_image_index, kind="stable")
    counts = np.bincount(pool.text_image_index, minlength=len(pool.image_ids))
    return np.split(order, np.cumsum(counts)[:-1])


def _train_round(data: _Data, mask: np.ndarray, rows: list[np.ndarray], train: dict, seed: int):
    images = np.flatnonzero(mask)
    captions = np.concatenate([rows[i] for i in images])
    remap = np.full(len(mask), -1, dtype=np.int64)
    remap[images] = np.arange(len(images))
    index = remap[data.pool.text_image_index[captions]]
    # no early stopping: a tenth of a small paired set is too noisy a validation set; every epoch runs, the last is kept
    heads, curve = train_heads(data.pool_images[images], data.pool_texts[captions], index, seed=seed, val_fraction=0.0, **train)
    return heads, captions, curve


def _write_store(config: HnselConfig, data: _Data, heads, mask: np.ndarray, captions: np.ndarray) -> None:
    """Every pool image (paired or not) and the paired captions, as vectors through this round's heads."""
    pool = data.pool
    img = apply_heads(heads["image"], data.pool_images)
    txt = apply_heads(heads["text"], data.pool_texts[captions])
    probabilistic = heads["image"].probabilistic
    extra_img = {"uncertainty": head_uncertainty(heads["image"], data.pool_images)} if probabilistic else {}
    extra_txt = {"uncertainty": head_uncertainty(heads["text"], data.pool_texts[captions])} if probabilistic else {}
    with open_store(config.store) as store:
        store.ensure_collections(img.shape[1], uncertainty=probabilistic)
        store.upsert("images", {"id": pool.image_ids, "vector": img, "uri": pool.uris, "round": [-1] * len(img),
                                "pool": ["paired" if m else "unpaired" for m in mask], **extra_img})
        store.upsert("texts", {"id": [data.caption_ids[j] for j in captions], "vector": txt, "round": [-1] * len(txt),
                               "image_id": [pool.image_ids[pool.text_image_index[j]] for j in captions],
                               "text": [pool.texts[j] for j in captions], "pool": ["paired"] * len(txt), **extra_txt})
        if probabilistic:
            store.set_meta(MATCH_META_KEY, heads["text"].spec["match"])


def _round(ctx: dict, run: dict, spec: StrategySpec, mask: np.ndarray, number: int) -> dict:
    data, seed, rows = ctx["data"], run["seed"], ctx["rows"]
    round_seed = int(np.random.default_rng([seed, number]).integers(2**31))
    t0 = time.perf_counter()
    heads, captions, curve = _train_round(data, mask, rows, ctx["train"], round_seed)
    t1 = time.perf_counter()
    metrics = evaluate_recall(apply_heads(heads["image"], data.test_images), apply_heads(heads["text"], data.test_texts),
                              data.test.text_image_index)
    entry = {"round": number, "paired": int(mask.sum()), "captions": int(len(captions)), "metrics": metrics,
             "epochs": int(curve[-1]["epoch"]), "train_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1,
             "picks": [], "embed_seconds": 0.0, "select_seconds": 0.0, "stats": {}}
    if number < ctx["rounds"]:
        config = ctx["config"].with_overrides(namespace=run["namespace"])
        t2 = time.perf_counter()
        _write_store(config, data, heads, mask, captions)
        t3 = time.perf_counter()
        params = {k: v for k, v in spec.params.items() if k != DEDUP_PARAM}
        result = select(config, ctx["budget"], spec.name, params, seed=round_seed, record=False,
                        dedup_radius=spec.params.get(DEDUP_PARAM, 0.0))
        entry.update(picks=[str(i) for i in result.selection.ids], embed_seconds=t3 - t2, select_seconds=time.perf_counter() - t3,
                     stats={k: v for k, v in result.selection.stats.items() if _plain(v)})
    return entry


def _run(ctx: dict, run: dict, spec: StrategySpec, save: Callable[[], None], on_progress: ProgressFn | None) -> int:
    """Continue one (strategy, seed) run from its last finished round; returns how many rounds were resumed."""
    pool_ids = ctx["data"].pool.image_ids
    position = {i: n for n, i in enumerate(pool_ids)}
    mask = np.zeros(len(pool_ids), dtype=bool)
    initial = np.sort(np.random.default_rng([run["seed"], 0]).choice(len(pool_ids), ctx["n_init"], replace=False))
    mask[initial] = True
    run.setdefault("init_ids", [pool_ids[i] for i in initial])
    for entry in run["rounds"]:
        mask[[position[i] for i in entry["picks"]]] = True
    resumed = len(run["rounds"])
    for number in range(resumed, ctx["rounds"] + 1):
        if on_progress:
            on_progress(f"{spec.label} seed {run['seed']}", number, ctx["rounds"] + 1)
        entry = _round(ctx, run, spec, mask, number)
        picked = [position[i] for i in entry["picks"]]
        if mask[picked].any():
            raise InputError(f"strategy {spec.label!r} picked already paired image {pool_ids[picked[int(np.argmax(mask[picked]))]]!r}")
        mask[picked] = True
        run["rounds"].append(entry)
        save()
    if on_progress:
        on_progress(f"{spec.label} seed {run['seed']}", ctx["rounds"] + 1, ctx["rounds"] + 1)
    return resumed


def _plain(value: Any, depth: int = 2) -> bool:
    """A stats value kept in results.json: a scalar, or a small dict or list of such values, two levels deep
    (``auto_decision``, ``engine_choice``, ``ascmr`` with its uncertainty source and weights)."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return True
    if depth == 0 or not isinstance(value, (dict, list, tuple)) or len(value) > 64:
        return False
    return all(_plain(v, depth - 1) for v in (value.values() if isinstance(value, dict) else value))


def _namespace(label: str, seed: int) -> str:
    return "sim_" + re.sub(r"[^0-9A-Za-z]+", "_", label).strip("_") + f"_s{seed}"


def _atomic_json(path: Path, doc: dict) -> None:
    write_text_atomic(path, json.dumps(doc, indent=1))


def _load_previous(path: Path, settings: dict) -> dict:
    if not path.exists():
        return {"version": 1, "settings": settings, "runs": []}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the previous results ({exc}); delete it or use another --out", path=path) from None
    if doc.get("settings") != settings:
        diff = sorted(k for k in set(settings) | set(doc.get("settings", {})) if settings.get(k) != doc.get("settings", {}).get(k))
        raise ConfigError(f"{path} holds a simulation with other settings ({', '.join(diff)}); use another --out or the same flags to resume")
    return doc


def simulate(config: HnselConfig, source: str | os.PathLike, *, out: str | os.PathLike, strategies: Sequence[str] = ("hardneg", "random"),
             seeds: Sequence[int] = (0,), init: float = 0.1, rounds: int = 3, budget: int | None = None, split: str = "train",
             test_split: str = "test", model_name: str | None = None, pretrained: str | None = DEFAULT_PRETRAINED, loss: str = "infonce",
             head: str = "linear", hidden: int = 1024, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
             milvus_uri: str | None = None, images_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
             device: str = "auto", report: bool = True, on_progress: ProgressFn | None = None, probabilistic: float = 0.0,
             id_column: str | None = None, uri_column: str | None = None, caption_column: str | None = None) -> SimulateReport:
    """Run (or resume) the simulation into ``out``; see the module docstring. ``budget`` None: 5 % of the pool.
    ``probabilistic`` > 0: the heads are Gaussian (docs/ascmr.md), trained with that weight on the match loss; their
    summed variances are stored beside the vectors and their calibrated match parameters in the store's meta record."""
    specs = [parse_strategy(s) for s in strategies]
    spec_loss = str(parse_loss(loss))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("--out must be a folder", path=out)
    started = time.perf_counter()
    dataset = _dataset(source, split, test_split, images_dir, {"id_column": id_column, "uri_column": uri_column, "caption_column": caption_column})
    n_pool = sum(1 for r in dataset.images if r.split == split and r.captions)
    budget = max(1, int(round(0.05 * n_pool))) if budget is None else budget
    n_init = _check(init, rounds, budget, n_pool, seeds, specs)
    data = _load_data(dataset, source, split, test_split, model_name, pretrained, device, cache_dir, on_progress)
    train = dict(loss=spec_loss, head=head, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr)
    if probabilistic:
        train["probabilistic"] = float(probabilistic)  # only when used: earlier results files stay resumable
    if data.model.get("head_dim"):  # towers of different widths: heads map both into the model's retrieval space
        train["dim_out"] = int(data.model["head_dim"])
    settings = {"source": str(Path(source).resolve()), "split": split, "test_split": test_split, "pool": n_pool,
                "test": len(data.test.image_ids), "init": init, "n_init": n_init, "rounds": rounds, "budget": budget,
                "model": {k: data.model.get(k) for k in ("model_name", "config_sha256", "weights", "dim")}, "train": train}
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_NAME
    doc = _load_previous(path, settings)
    base = config.with_overrides(uri=milvus_uri or str((out / "store.db").resolve()))
    ctx = {"data": data, "rows": _caption_rows(data.pool), "train": train, "rounds": rounds, "budget": budget, "n_init": n_init,
           "config": base}
    runs = {(r["strategy"], r["seed"]): r for r in doc["runs"]}
    resumed = 0
    for spec in specs:
        for seed in seeds:
            run = runs.get((spec.label, int(seed)))
            if run is None:
                run = {"strategy": spec.label, "name": spec.name, "params": spec.params, "seed": int(seed),
                       "namespace": _namespace(spec.label, int(seed)), "rounds": []}
                doc["runs"].append(run)
            resumed += _run(ctx, run, spec, lambda: _atomic_json(path, doc), on_progress)
    _atomic_json(path, doc)
    wanted = [r for r in doc["runs"] if r["strategy"] in {s.label for s in specs} and r["seed"] in set(map(int, seeds))]
    result = SimulateReport(str(out), str(path), None, None, wanted, resumed, time.perf_counter() - started)
    if report:
        result.table, result.plot = write_reports(out, settings, wanted)
    return result


# --- reports ------------------------------------------------------------------------------------
def summarise(runs: Sequence[dict]) -> dict[str, list[dict]]:
    """Per strategy label, per round: paired count, mean/std of R-sum, R@1 both ways, and seconds over seeds."""
    by_label: dict[str, list[dict]] = {}
    for run in runs:
        by_label.setdefault(run["strategy"], []).append(run)
    out = {}
    for label, group in by_label.items():
        n = min(len(r["rounds"]) for r in group)
        rows = []
        for number in range(n):
            entries = [r["rounds"][number] for r in group]
            rsum = np.array([e["metrics"]["rsum"] for e in entries])
            rows.append({"round": number, "paired": entries[0]["paired"], "seeds": len(entries), "rsum_mean": float(rsum.mean()),
                         "rsum_std": float(rsum.std(ddof=1)) if len(rsum) > 1 else 0.0,
                         "i2t_r1": float(np.mean([e["metrics"]["i2t"]["r1"] for e in entries])),
                         "t2i_r1": float(np.mean([e["metrics"]["t2i"]["r1"] for e in entries])),
                         "select_seconds": float(np.mean([e["select_seconds"] for e in entries])),
                         "train_seconds": float(np.mean([e["train_seconds"] for e in entries]))})
        out[label] = rows
    return out


def markdown_table(settings: dict, summary: dict[str, list[dict]], ceiling: float | None = None) -> str:
    """R-sum mean ± std (over seeds) per strategy and paired count, then mean selection seconds per round.

    ``ceiling``: R-sum of the same training on the whole pool; a second table gives each mean as a percentage of it."""
    counts = sorted({row["paired"] for rows in summary.values() for row in rows})
    head = "| strategy | " + " | ".join(str(c) for c in counts) + " | select s/round | train s/round |"
    lines = [f"R-sum on the test split ({settings['test']} images) against the number of paired images "
             f"(pool {settings['pool']}, budget {settings['budget']}/round); mean ± std over seeds.", "",
             head, "|" + "---|" * (len(counts) + 3)]
    for label, rows in summary.items():
        cells = {row["paired"]: f"{row['rsum_mean']:.1f} ± {row['rsum_std']:.1f}" for row in rows}
        picked = [row["select_seconds"] for row in rows[:-1]] or [0.0]
        lines.append(f"| {label} | " + " | ".join(cells.get(c, "") for c in counts)
                     + f" | {np.mean(picked):.1f} | {np.mean([row['train_seconds'] for row in rows]):.1f} |")
    if ceiling:
        lines += ["", f"Percent of full supervision (the same training on all {settings['pool']} pool images: R-sum {ceiling:.1f}).", "",
                  "| strategy | " + " | ".join(str(c) for c in counts) + " |", "|" + "---|" * (len(counts) + 1)]
        for label, rows in summary.items():
            cells = {row["paired"]: f"{100 * row['rsum_mean'] / ceiling:.1f} %" for row in rows}
            lines.append(f"| {label} | " + " | ".join(cells.get(c, "") for c in counts) + " |")
    return "\n".join(lines) + "\n"


def plot_rsum(path: Path, summary: dict[str, list[dict]], title: str, ceiling: float | None = None) -> Path | None:
    """R-sum against paired images, one line per strategy with a ±1 std band (and a dashed ``ceiling``); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, rows in summary.items():
        x = np.array([r["paired"] for r in rows])
        mean, std = np.array([r["rsum_mean"] for r in rows]), np.array([r["rsum_std"] for r in rows])
        line, = ax.plot(x, mean, marker="o", ms=3, label=label)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    if ceiling:
        ax.axhline(ceiling, color="black", linestyle="--", linewidth=1, label=f"all pool images paired ({ceiling:.1f})")
    ax.set(xlabel="paired images", ylabel="R-sum (test)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_reports(out: Path, settings: dict, runs: Sequence[dict], ceiling: float | None = None) -> tuple[str, str | None]:
    summary = summarise(runs)
    table = write_text_atomic(out / "results.md", markdown_table(settings, summary, ceiling))
    seeds = max((row["seeds"] for rows in summary.values() for row in rows), default=0)
    plot = plot_rsum(out / "rsum.png", summary, f"R-sum vs paired images ({seeds} seeds, pool {settings['pool']})", ceiling)
    return str(table), str(plot) if plot else None
