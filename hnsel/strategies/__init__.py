"""Selection strategies, pluggable by name: ``get_strategy(name, **params)``, ``list_strategies()``."""

from . import ascmr, auto, coreset, density, design, hardneg, herding, random  # noqa: F401  (importing registers them)
from .base import (AnchorChunk, ArrayVectors, ExactIndex, NeighborIndex, Selection, SelectionProblem, VectorSource, get_strategy, list_strategies,
                   register)

__all__ = ["AnchorChunk", "ArrayVectors", "VectorSource", "ExactIndex", "NeighborIndex", "Selection", "SelectionProblem", "get_strategy", "list_strategies", "register"]
