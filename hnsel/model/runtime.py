"""The image tower at the backbone's own speed on CPU, and the thread budget beside the decoding workers.

``accelerate(encoder)`` swaps the image forward pass of a CPU ``Encoder`` for a faster one that gives the same
features: ONNX Runtime when ``onnxruntime`` and ``onnx`` are installed (the tower exported once, kept under
``.hnsel-cache/onnx``, and checked against torch before it is used), else torch in channels-last memory format.
``HNSEL_IMAGE_RUNTIME=torch`` keeps torch; ``onnx`` makes a failing export an error instead of a fallback.

``forward_threads(num_workers)``: the forward pass gets the cores the decoding workers leave (at least one), so the
one process does not run its full set of torch threads beside busy decoders. BENCHMARKS.md (``## Embedding split``,
benchmarks/embed_split.py) holds the measurements behind both.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import HnselError

__all__ = ["RUNTIMES", "RUNTIME_ENV", "DEFAULT_ONNX_DIR", "MIN_COSINE", "accelerate", "forward_threads", "cpu_cores", "threads",
           "onnx_image_tower", "OnnxImageTower", "image_budget",
           "check_runtime"]

RUNTIME_ENV = "HNSEL_IMAGE_RUNTIME"
RUNTIMES = ("auto", "onnx", "torch")
DEFAULT_ONNX_DIR = Path(".hnsel-cache") / "onnx"
MIN_COSINE = 0.9999  # an exported tower is used only when it gives the torch tower's features to this cosine
_log = logging.getLogger(__name__)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def forward_threads(num_workers: int, cores: int | None = None) -> int:
    """Threads for the forward pass beside ``num_workers`` decoding processes: the cores they leave, at least one."""
    return max(1, (cores or cpu_cores()) - max(0, num_workers))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class OnnxImageTower:
    """An ONNX Runtime session of an image tower, called like the torch tower: (n, 3, H, W) float32 -> features."""

    def __init__(self, session: Any, path: Path):
        self.session, self.path = session, path
        self.input_name = session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: batch})[0])


def _image_size(visual: torch.nn.Module) -> tuple[int, int]:
    size = getattr(visual, "image_size", 224)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _tower_key(visual: torch.nn.Module, size: tuple[int, int]) -> str:
    """Names the exported file: the tower's class, input size, weights and the exporting torch."""
    digest = hashlib.sha256(f"{type(visual).__module__}.{type(visual).__name__}:{size}:{torch.__version__}".encode())
    for name, value in visual.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _export(visual: torch.nn.Module, size: tuple[int, int], path: Path) -> None:
    """The tower as ONNX (batch size dynamic), written atomically so two runs never read half a file."""
    example = torch.zeros(2, 3, *size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.enable_grad():  # with grad on, attention layers skip their fused fast path
        warnings.simplefilter("ignore")
        torch.onnx.export(visual, example, buffer, input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "n"}, "features": {0: "n"}}, dynamo=False, opset_version=17)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(buffer.getvalue())
    os.replace(tmp, path)


def _session(path: Path, num_threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads yield to the decoders
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _agrees(tower: Callable, visual: torch.nn.Module, size: tuple[int, int]) -> float:
    """The smallest cosine between the two towers' features of a few seeded random images."""
    images = torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = visual(images).float().reshape(4, -1)
    got = tower(images).float().reshape(4, -1)
    return float(torch.nn.functional.cosine_similarity(want, got, dim=-1).min())


def onnx_image_tower(visual: torch.nn.Module, num_threads: int, cache_dir: str | os.PathLike = DEFAULT_ONNX_DIR) -> OnnxImageTower:
    """``visual`` run by ONNX Runtime; raises (ImportError, or why not) when it cannot stand in for the torch tower."""
    import onnxruntime  # noqa: F401  (missing: the caller keeps torch)

    size = _image_size(visual)
    path = Path(cache_dir) / f"{_tower_key(visual, size)}.onnx"
    if not path.is_file():
        _export(visual, size, path)
    try:
        session = _session(path, num_threads)
    except Exception:  # a damaged cached file is only a cache miss
        _export(visual, size, path)
        session = _session(path, num_threads)
    tower = OnnxImageTower(session, path)
    cosine = _agrees(tower, visual, size)
    if not cosine >= MIN_COSINE:
        raise ValueError(f"ONNX Runtime features differ from torch's (cosine {cosine:.6f} < {MIN_COSINE})")
    return tower


def check_runtime(runtime: str | None = None) -> str:
    """``runtime`` (else ``HNSEL_IMAGE_RUNTIME``, else auto), refused with a one-line error when unknown."""
    return _runtime_choice(runtime)


def _runtime_choice(runtime: str | None) -> str:
    choice = (runtime or os.environ.get(RUNTIME_ENV) or "auto").strip().lower()
    if choice not in RUNTIMES:
        raise HnselError(f"{RUNTIME_ENV}={choice!r} is not one of {', '.join(RUNTIMES)}")
    return choice


def _channels_last(visual: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    visual.to(memory_format=torch.channels_last)
    return lambda images: visual(images.contiguous(memory_format=torch.channels_last))


def accelerate(encoder: Any, num_workers: int = 0, runtime: str | None = None, cache_dir: str | os.PathLike = DEFAULT_ONNX_DIR) -> str:
    """Give a CPU ``encoder`` its fastest exact image forward pass (``encoder.image_forward``); returns its name.

    ``onnx`` (ONNX Runtime, ``forward_threads(num_workers)`` threads), ``torch-channels-last``, or ``torch`` (other
    devices, or ``runtime``/``HNSEL_IMAGE_RUNTIME`` ``torch``). Called again, it keeps what it chose the first time: call it
    once the weights are final (an exported tower does not follow later training of ``encoder.model``)."""
    choice = _runtime_choice(runtime)
    if getattr(encoder, "image_runtime", None):
        return encoder.image_runtime
    if encoder.device.type != "cpu" or choice == "torch":
        return "torch"
    visual = encoder.model.visual
    if choice in ("auto", "onnx"):
        try:
            encoder.image_forward, encoder.image_runtime = onnx_image_tower(visual, forward_threads(num_workers), cache_dir), "onnx"
            return "onnx"
        except Exception as exc:  # no onnxruntime, a tower the exporter cannot trace, features that differ: torch runs
            if choice == "onnx":
                raise HnselError(f"{RUNTIME_ENV}=onnx: cannot run the image tower on ONNX Runtime ({type(exc).__name__}: "
                                 f"{str(exc)[:200]}); pip install onnxruntime onnx, or use {RUNTIME_ENV}=torch") from None
            _log.info("image tower stays on torch: %s", exc)
    encoder.image_forward, encoder.image_runtime = _channels_last(visual), "torch-channels-last"
    return "torch-channels-last"


@contextlib.contextmanager
def image_budget(encoder: Any, num_workers: int) -> Iterator[str]:
    """While images stream in from ``num_workers`` decoders: the fastest exact image tower, and on CPU torch's
    threads cut to the cores the decoders leave (restored after). On ONNX Runtime torch runs only the paired captions'
    text tower in the meantime, and the cut still pays on shared cores: spare torch threads spin (BENCHMARKS.md, 320
    captions: 2.9-3.7 s on one thread, 5.0-6.1 s on two). Yields the runtime's name."""
    name = accelerate(encoder, num_workers)
    if encoder.device.type != "cpu":
        yield name
        return
    with threads(forward_threads(num_workers)):
        yield name
