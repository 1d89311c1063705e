"""Milvus, and nothing else: ``milvus`` (``Store``: the only place a filter expression is written), ``problem``
(the strategies' view of a store: ``build_problem``, ``MilvusIndex``), ``bulk`` (BulkWriter files for
``bulk_import``) and ``leases`` (claims that keep concurrent rounds and imports apart).
"""

from .milvus import MAX_TOPK, Store, in_filter, open_store, quote
from .problem import MilvusIndex, build_problem

__all__ = ["Store", "open_store", "quote", "in_filter", "MAX_TOPK", "MilvusIndex", "build_problem"]
