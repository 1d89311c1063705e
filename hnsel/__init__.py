"""hnsel: pick the unpaired samples worth annotating for image-text retrieval (hard-negative active learning)."""

from .config import HnselConfig, StoreConfig, load_config
from .errors import HnselError
from .strategies import Selection, get_strategy, list_strategies

__version__ = "0.1.0"

__all__ = ["HnselConfig", "StoreConfig", "load_config", "HnselError", "Selection", "get_strategy", "list_strategies", "__version__"]
