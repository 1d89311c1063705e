"""How much the near-duplicate guard changes each strategy's picks on a store a simulation left behind.

    python experiments/dedup_effect.py STORE_DB NAMESPACE --budget 120 --radii 0.01 0.02 0.05 0.1 --strategies random coreset herding design

Reports the candidates' nearest-neighbour cosine distances (to the pool and to the paired set: quantiles), then for
each strategy and radius how many of the unguarded picks the guard drops (near a paired sample, near another pick),
how far it had to ask, and how many of the final picks differ from the unguarded ones. Markdown on stdout.
"""

from __future__ import annotations

import argparse

import numpy as np

from hnsel import api
from hnsel.config import HnselConfig, StoreConfig
from hnsel.errors import SelectionError
from hnsel.store import open_store
from hnsel.strategies import get_strategy
from hnsel.strategies.guard import guarded_select


def distances(problem) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's cosine distance to its nearest other candidate and to its nearest paired sample."""
    to_pool, to_paired = [], []
    for indices, vectors in problem.candidate_batches(1024):
        for row, (ids, sims) in zip(indices, problem.index.search(vectors, 2, "candidates")):
            others = [s for x, s in zip(ids, sims) if x != problem.candidate_ids[row]]
            to_pool.append(1.0 - others[0] if others else np.inf)
        to_paired += [1.0 - float(s[0]) if len(s) else np.inf for _, s in problem.index.search(vectors, 1, "paired")]
    return np.array(to_pool), np.array(to_paired)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("namespace")
    parser.add_argument("--budget", type=int, default=120)
    parser.add_argument("--radii", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1])
    parser.add_argument("--strategies", nargs="+", default=["random", "coreset", "herding", "design"])
    args = parser.parse_args()
    config = HnselConfig(store=StoreConfig(uri=args.store, namespace=args.namespace))
    with open_store(config.store) as store:
        problem = api.build_problem(store, "image")
        pool, paired = distances(problem)
        q = [0.01, 0.05, 0.1, 0.5]
        print(f"candidates {len(problem.candidate_ids)}, paired {problem.index.store.count('images', problem.index.filters['paired'])}\n")
        print("| distance quantile | " + " | ".join(f"{x:.0%}" for x in q) + " |\n|---|" + "---|" * len(q))
        print("| to the nearest other candidate | " + " | ".join(f"{v:.4f}" for v in np.quantile(pool, q)) + " |")
        print("| to the nearest paired image | " + " | ".join(f"{v:.4f}" for v in np.quantile(paired, q)) + " |\n")
        print("| strategy | radius | dropped near paired | dropped near a pick | asked | picks changed |\n|---|---|---|---|---|---|")
        for name in args.strategies:
            strategy = get_strategy(name)

            def run(ask: int):
                return strategy.select(problem, ask, np.random.default_rng(0))

            plain = set(run(args.budget).ids)
            for radius in args.radii:
                try:
                    sel = guarded_select(run, problem, args.budget, radius)
                except SelectionError as err:
                    print(f"| {name} | {radius} | refused: {err} | | | |")
                    continue
                d = sel.stats["dedup"]
                print(f"| {name} | {radius} | {d['dropped_near_paired']} | {d['dropped_near_pick']} | {d['asked']} | {len(set(sel.ids) - plain)} |")


if __name__ == "__main__":
    main()
