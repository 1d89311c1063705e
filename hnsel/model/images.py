"""Images into the model: a DataLoader that decodes and preprocesses images in worker processes and reports the
ones it cannot read instead of stopping (``hnsel embed`` lists them; feature extraction refuses them)."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from ..data.images import ImageReadError, open_image

__all__ = ["ImageItems", "image_batches"]


class ImageItems(torch.utils.data.Dataset):
    """A map-style dataset over image URIs: (index, preprocessed tensor or None, why it failed or None)."""

    def __init__(self, uris: Sequence[str | None], preprocess: Callable):
        self.uris, self.preprocess = uris, preprocess

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int):
        uri = self.uris[index]
        if not uri:
            return index, None, "no uri"
        try:
            return index, self.preprocess(open_image(uri)), None
        except ImageReadError as exc:
            return index, None, exc.reason
        except Exception as exc:  # a transform failing on an odd image must not stop the job
            return index, None, f"cannot preprocess ({type(exc).__name__}: {str(exc)[:200]})"


def _collate(items):
    ok = [(i, t) for i, t, _ in items if t is not None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, [(i, reason) for i, t, reason in items if t is None]


def image_batches(uris: Sequence[str | None], preprocess: Callable, batch_size: int, num_workers: int = 0,
                  pin_memory: bool = False) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """Batches in order: (indices of the images read, their stacked tensors or None, [(index, reason)] of those not read)."""
    loader = DataLoader(ImageItems(uris, preprocess), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
                        shuffle=False, pin_memory=pin_memory, persistent_workers=False, prefetch_factor=4 if num_workers else None)
    return iter(loader)
