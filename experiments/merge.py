"""Join the per-seed simulation folders into one results.json, results.md and rsum.png.

    python experiments/merge.py OUT DIR [DIR ...] [--ceiling RSUM]

``--ceiling``: the R-sum of the same head training on the whole pool (full supervision), drawn as a dashed line
and used for a percent-of-full-supervision table. Every DIR/results.json must hold the same settings (the same protocol); runs are concatenated, and a run of
the same strategy label and seed in a later DIR replaces the earlier one (so a re-run strategy, such as a
changed ``auto``, is merged over an older merged results.json without keeping both).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hnsel.workflows.simulate import summarise, write_reports


def main(out: str, *folders: str, ceiling: float | None = None) -> None:
    docs = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    settings = docs[0]["settings"]
    for folder, doc in zip(folders, docs):
        if doc["settings"] != settings:
            raise SystemExit(f"{folder}/results.json: other settings than {folders[0]}; not merged")
    latest = {(run["strategy"], run["seed"]): run for doc in docs for run in doc["runs"]}
    runs = list(latest.values())
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    (target / "results.json").write_text(json.dumps({"version": 1, "settings": settings, "runs": runs}, indent=1))
    table, plot = write_reports(target, settings, runs, ceiling)
    total = sum(e[k] for r in runs for e in r["rounds"] for k in ("train_seconds", "eval_seconds", "embed_seconds", "select_seconds"))
    print(f"{len(runs)} runs; {total:.0f} s of train+eval+embed+select; wrote {table}, {plot}")
    for label, rows in summarise(runs).items():
        print(label, " ".join(f"{r['paired']}:{r['rsum_mean']:.1f}±{r['rsum_std']:.1f}" for r in rows))


if __name__ == "__main__":
    args = sys.argv[1:]
    at = args.index("--ceiling") if "--ceiling" in args else None  # R-sum of the same training on the whole pool
    main(*(args[:at] + args[at + 2:] if at is not None else args), ceiling=float(args[at + 1]) if at is not None else None)
