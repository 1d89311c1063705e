"""Paired comparison of simulation runs against a baseline strategy, as EXPERIMENTS.md reports it.

    python experiments/compare.py RESULTS.json [RESULTS.json ...] [--baseline random] [--ceiling RSUM] [--prefix LABEL:]

Runs of every file are pooled by strategy label (``--prefix`` names a file's labels, e.g. ``prob:``, when two files hold
the same strategy trained differently). Prints three markdown tables: test R-sum mean ± std per round; the paired
difference to the baseline (same seed, same round) as mean ± standard error with the seeds won; and, with
``--ceiling``, each mean as a percent of full supervision.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load(paths: list[str], prefixes: list[str]) -> dict[str, dict[int, list[float]]]:
    """label -> seed -> R-sum per round."""
    out: dict[str, dict[int, list[float]]] = {}
    for path, prefix in zip(paths, prefixes):
        for run in json.loads(Path(path).read_text())["runs"]:
            out.setdefault(prefix + run["strategy"], {})[run["seed"]] = [e["metrics"]["rsum"] for e in run["rounds"]]
    return out


def tables(runs: dict[str, dict[int, list[float]]], baseline: str, ceiling: float | None) -> str:
    n = min(len(r) for seeds in runs.values() for r in seeds.values())
    head = "| strategy | seeds | " + " | ".join(f"round {i}" for i in range(n)) + " |\n|" + "---|" * (n + 2)
    lines = ["R-sum, mean ± std over seeds:", "", head]
    for label, seeds in runs.items():
        a = np.array([seeds[s][:n] for s in sorted(seeds)])
        lines.append(f"| {label} | {len(a)} | " + " | ".join(f"{m:.1f} ± {d:.1f}" for m, d in zip(a.mean(0), a.std(0, ddof=1))) + " |")
    base = runs[baseline]
    lines += ["", f"Paired difference to {baseline} (mean ± standard error over shared seeds; seeds won), rounds 1-{n - 1}:", "",
              "| strategy | " + " | ".join(f"round {i}" for i in range(1, n)) + " | seeds won |", "|" + "---|" * (n + 1)]
    for label, seeds in runs.items():
        if label == baseline:
            continue
        shared = sorted(set(seeds) & set(base))
        d = np.array([[seeds[s][i] - base[s][i] for i in range(1, n)] for s in shared])
        se = d.std(0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.zeros(n - 1)
        won = ", ".join(str(int((d[:, i] > 0).sum())) for i in range(n - 1))
        lines.append(f"| {label} | " + " | ".join(f"{m:+.1f} ± {e:.1f}" for m, e in zip(d.mean(0), se)) + f" | {won} (of {len(d)}) |")
    if ceiling:
        lines += ["", f"Percent of full supervision (R-sum {ceiling:.1f}):", "",
                  "| strategy | " + " | ".join(f"round {i}" for i in range(n)) + " |", "|" + "---|" * (n + 1)]
        for label, seeds in runs.items():
            a = np.array([seeds[s][:n] for s in sorted(seeds)])
            lines.append(f"| {label} | " + " | ".join(f"{100 * m / ceiling:.1f} %" for m in a.mean(0)) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    def option(name: str, default=None):
        if name in argv:
            at = argv.index(name)
            value = argv[at + 1]
            del argv[at:at + 2]
            return value
        return default

    baseline = option("--baseline", "random")
    ceiling = option("--ceiling")
    prefixes = []
    paths = []
    prefix = ""
    for arg in argv:
        if arg.startswith("--prefix="):
            prefix = arg.split("=", 1)[1]
            continue
        paths.append(arg)
        prefixes.append(prefix)
    print(tables(load(paths, prefixes), baseline, float(ceiling) if ceiling else None))


if __name__ == "__main__":
    main(sys.argv[1:])
