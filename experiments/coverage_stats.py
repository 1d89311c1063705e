"""Paired differences between strategies of one simulation, per seed, with 95 % intervals (issue 25's protocol).

    python experiments/coverage_stats.py RESULTS_JSON --against coreset random [--bootstrap 10000]

For every strategy label and every reference label: over the seeds both ran (the same initial set per seed), the
difference in test R-sum at the last round and in the area under the R-sum curve (trapezoid over paired images,
divided by the paired range: the curve's mean R-sum). Reported: mean difference, a 95 % Student t interval and a
95 % percentile bootstrap interval over seeds (seeded resampling), and the seeds won. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# Student t 0.975 quantiles by degrees of freedom (the standard table); beyond 30 the normal 1.96 is close enough.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 11: 2.201,
        12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}


def t_quantile(df: int) -> float:
    return T975.get(df) or T975[max(k for k in T975 if k <= df)] if df <= 30 else 1.96


def curves(doc: dict) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """label -> seed -> (paired counts, R-sum per round)."""
    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for run in doc["runs"]:
        paired = np.array([r["paired"] for r in run["rounds"]], dtype=float)
        rsum = np.array([r["metrics"]["rsum"] for r in run["rounds"]], dtype=float)
        out.setdefault(run["strategy"], {})[int(run["seed"])] = (paired, rsum)
    return out


def auc(paired: np.ndarray, rsum: np.ndarray) -> float:
    return float(np.trapezoid(rsum, paired) / (paired[-1] - paired[0])) if len(paired) > 1 else float(rsum[0])


def interval(diffs: np.ndarray, resamples: int, rng: np.random.Generator) -> dict:
    n = len(diffs)
    mean = float(diffs.mean())
    half = t_quantile(n - 1) * float(diffs.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
    boot = diffs[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n": n, "mean": mean, "t": (mean - half, mean + half), "bootstrap": (float(lo), float(hi)), "won": int((diffs > 0).sum())}


def compare(doc: dict, against: list[str], resamples: int = 10000, seed: int = 0) -> list[dict]:
    data = curves(doc)
    rows = []
    for ref in against:
        for label in sorted(data):
            if label == ref or ref not in data:
                continue
            seeds = sorted(set(data[label]) & set(data[ref]))
            if not seeds:
                continue
            rounds = min(len(data[x][s][1]) for x in (label, ref) for s in seeds)
            last = np.array([data[label][s][1][rounds - 1] - data[ref][s][1][rounds - 1] for s in seeds])
            area = np.array([auc(data[label][s][0][:rounds], data[label][s][1][:rounds]) - auc(data[ref][s][0][:rounds], data[ref][s][1][:rounds])
                             for s in seeds])
            rng = np.random.default_rng(seed)
            rows.append({"strategy": label, "against": ref, "rounds": rounds, "last": interval(last, resamples, rng),
                         "auc": interval(area, resamples, rng)})
    return rows


def markdown(rows: list[dict]) -> str:
    fmt = lambda iv: f"{iv['mean']:+.1f} | [{iv['t'][0]:+.1f}, {iv['t'][1]:+.1f}] | [{iv['bootstrap'][0]:+.1f}, {iv['bootstrap'][1]:+.1f}] | {iv['won']}/{iv['n']}"  # noqa: E731
    lines = ["| strategy | against | last-round R-sum diff | 95 % t | 95 % bootstrap | seeds won | AUC diff | 95 % t | 95 % bootstrap | seeds won |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['strategy']} | {r['against']} | {fmt(r['last'])} | {fmt(r['auc'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--against", nargs="+", default=["coreset", "random"])
    parser.add_argument("--bootstrap", type=int, default=10000)
    args = parser.parse_args()
    print(markdown(compare(json.loads(Path(args.results).read_text()), args.against, args.bootstrap)), end="")


if __name__ == "__main__":
    main()
