"""hnsel: pick the unpaired samples worth annotating for image-text retrieval (hard-negative active learning)."""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's fork notices are noise when image workers start

from .config import HnselConfig, StoreConfig, load_config
from .errors import HnselError
from .strategies import Selection, get_strategy, list_strategies

__version__ = "0.1.0"

__all__ = ["HnselConfig", "StoreConfig", "load_config", "HnselError", "Selection", "get_strategy", "list_strategies", "__version__"]
