"""Transductive (V-optimal) experimental design for linear heads on frozen features (Yu, Bi and Tresp 2006; BAIT,
arXiv 2106.09675).

hnsel's heads are linear maps of frozen backbone features, so a ridge fit's prediction variance at ``x`` is
proportional to ``x^T A^-1 x`` with ``A = ridge I + sum of z z^T`` over the paired samples. The pool's mean variance is
``tr(A^-1 C)``, ``C`` = the candidates' (uncentred) second moment. Adding ``x`` lowers it by
``x^T A^-1 C A^-1 x / (1 + x^T A^-1 x)`` (Sherman-Morrison); each step picks the candidate that lowers it most and
adds its outer product to ``A``.

All algebra is ``r x r`` in the top-``r`` principal subspace of ``C`` (``dim``): one streamed pass sums ``C``, a second
projects the candidates (``N x r`` floats held), one pass over the paired side builds ``A``. Each pick updates ``A^-1``
and every candidate's two quadratic forms by rank-one corrections: O(N r) per pick, no neighbour search, no
``N x N`` matrix. Ties go to the smallest candidate index; ``dense_design`` (inverting ``A`` each step) is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SelectionError
from .base import Selection, SelectionProblem, check_budget, param, register

__all__ = ["Design", "principal_subspace", "design_greedy", "dense_design"]


def principal_subspace(problem: SelectionProblem, rank: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(basis ``d x r``, the eigenvalues of ``C`` it keeps, stats) from one streamed pass over the candidates."""
    moment, n = None, 0
    for _, vectors in problem.candidate_batches(batch_size):
        x = vectors.astype(np.float64)
        moment = x.T @ x if moment is None else moment + x.T @ x
        n += len(x)
    if moment is None:
        raise SelectionError("design: no candidate vectors were read")
    values, vectors = np.linalg.eigh(moment / n)
    top = np.argsort(-values, kind="stable")[: min(rank, len(values))]
    kept = float(values[top].sum() / max(values.sum(), 1e-12))
    return vectors[:, top], np.maximum(values[top], 0.0), {"dim": int(len(top)), "variance_kept": kept}


def _project(problem: SelectionProblem, basis: np.ndarray, batch_size: int) -> np.ndarray:
    z = np.zeros((len(problem.candidate_ids), basis.shape[1]))
    for indices, vectors in problem.candidate_batches(batch_size):
        z[indices] = vectors.astype(np.float64) @ basis
    return z


def _paired_moment(problem: SelectionProblem, basis: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    total, count = np.zeros((basis.shape[1], basis.shape[1])), 0
    for _, vectors in problem.paired_batches(batch_size) or ():
        z = vectors.astype(np.float64) @ basis
        total += z.T @ z
        count += len(z)
    return total, count


def design_greedy(z: np.ndarray, c: np.ndarray, a: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Greedy V-optimal picks over rows of ``z`` (``c``: the pool's second moment, ``a``: the starting ``A``), by
    Sherman-Morrison updates of ``A^-1`` and of each row's ``q = z^T A^-1 z`` and ``p = z^T A^-1 C A^-1 z``."""
    b = np.linalg.inv(a)
    zb = z @ b
    q = np.einsum("ij,ij->i", zb, z)
    p = np.einsum("ij,ij->i", zb @ c, zb)
    before = float(np.trace(b @ c))
    taken = np.zeros(len(z), dtype=bool)
    picks, gains = [], []
    for _ in range(budget):
        score = np.where(taken, -np.inf, p / (1.0 + q))
        k = int(np.argmax(score))
        picks.append(k)
        gains.append(float(score[k]))
        taken[k] = True
        u = b @ z[k]
        den = 1.0 + float(z[k] @ u)
        w = b @ (c @ u)
        zu, zw = z @ u, z @ w
        p -= 2.0 * zu * zw / den - zu * zu * float(u @ c @ u) / den**2
        q -= zu * zu / den
        b -= np.outer(u, u) / den
    return np.asarray(picks, dtype=np.int64), np.asarray(gains), {"mean_variance_before": before, "mean_variance_after": float(np.trace(b @ c))}


def dense_design(candidates: np.ndarray, paired: np.ndarray, budget: int, lam: float, rank: int | None = None) -> list[int]:
    """The in-memory reference: project onto the top ``rank`` eigenvectors of ``C`` (all when None), invert ``A`` afresh
    each step and score every candidate. For tests and small pools only."""
    x = candidates.astype(np.float64)
    values, vectors = np.linalg.eigh(x.T @ x / len(x))
    top = np.argsort(-values, kind="stable")[: rank or len(values)]
    z, zp = x @ vectors[:, top], paired.astype(np.float64) @ vectors[:, top]
    c = z.T @ z / len(z)
    a = lam * np.eye(len(top)) + zp.T @ zp
    picks: list[int] = []
    for _ in range(budget):
        b = np.linalg.inv(a)
        score = np.einsum("ij,jk,kl,il->i", z, b @ c, b, z) / (1.0 + np.einsum("ij,jk,ik->i", z, b, z))
        score[picks] = -np.inf
        k = int(np.argmax(score))
        picks.append(k)
        a = a + np.outer(z[k], z[k])
    return picks


@register("design")
@dataclass(frozen=True)
class Design:
    """V-optimal design: each pick most lowers the pool's mean prediction variance of a ridge head on the vectors."""

    dim: int = param(64, "Principal dimensions of the candidates kept for the design algebra (dim x dim matrices).")
    ridge: float = param(1.0, "Ridge weight lambda of A = lambda I + the paired and picked outer products.")
    batch_size: int = param(4096, "Candidate vectors per streamed batch.", flag="--candidate-batch")

    def __post_init__(self) -> None:
        if self.dim < 1 or self.batch_size < 1:
            raise SelectionError("design: dim and batch_size must be at least 1")
        if not self.ridge > 0:
            raise SelectionError(f"--ridge must be above 0, got {self.ridge}")

    def select(self, problem: SelectionProblem, budget: int, rng: np.random.Generator) -> Selection:
        ids = problem.candidate_ids
        check_budget(budget, len(ids))
        basis, values, stats = principal_subspace(problem, self.dim, self.batch_size)
        z = _project(problem, basis, self.batch_size)
        c = z.T @ z / len(z)
        paired, n_paired = _paired_moment(problem, basis, self.batch_size)
        picks, gains, greedy = design_greedy(z, c, self.ridge * np.eye(len(values)) + paired, budget)
        stats.update(greedy, candidates=int(len(ids)), paired=n_paired, ridge=self.ridge)
        return Selection(ids[picks], gains, np.zeros(budget, dtype=np.int64), np.array(["design"] * budget, dtype=object),
                         "design", self.__dict__.copy(), stats)
