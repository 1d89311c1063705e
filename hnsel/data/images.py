"""Opening one image from a local path, any URL fsspec can read (s3://, gs://, https://...), or its bytes."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "open_image", "is_remote"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class ImageReadError(InputError):
    """One image cannot be read: missing, not an image, truncated or corrupt. ``reason`` is the short why."""

    def __init__(self, uri: object, reason: str):
        super().__init__(reason, path=uri)
        self.uri = str(uri)
        self.reason = reason


def is_remote(uri: str) -> bool:
    """True for a URL with a scheme other than ``file://`` (Windows drive letters are local)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme != "file" and len(scheme) > 1


def _read_bytes(uri: str) -> bytes:
    try:
        import fsspec
    except ImportError:
        raise ImageReadError(uri, "remote URIs need fsspec: pip install 'hnsel[remote]'") from None
    try:
        with fsspec.open(uri, "rb") as fh:
            return fh.read()
    except ImportError as exc:  # the protocol's own package (s3fs, gcsfs, aiohttp) is missing
        raise ImageReadError(uri, f"cannot open this kind of URL ({exc}); install the fsspec extra for it") from None
    except FileNotFoundError:
        raise ImageReadError(uri, "missing file") from None
    except Exception as exc:  # network errors come in many types
        raise ImageReadError(uri, f"cannot download ({type(exc).__name__}: {str(exc)[:200]})") from None


def open_image(uri: str | os.PathLike | bytes | bytearray | memoryview) -> Image.Image:
    """Decode an image fully into RGB; any failure is an ``ImageReadError`` with a short reason.

    ``uri`` is a path or URL, or the encoded image itself (bytes, as WebDataset shards and Parquet columns hold it).
    """
    if isinstance(uri, (bytes, bytearray, memoryview)):
        if not len(uri):
            raise ImageReadError("<0 bytes>", "no image bytes")
        return _decode(io.BytesIO(uri), f"<{len(uri)} bytes>")
    uri = str(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    try:
        if is_remote(uri):
            source: object = io.BytesIO(_read_bytes(uri))
        else:
            path = Path(uri)
            if not path.is_file():
                raise ImageReadError(uri, "missing file" if not path.exists() else "not a file")
            source = path
    except OSError as exc:  # a name the file system refuses (too long, ...)
        raise ImageReadError(uri, f"truncated or corrupt ({str(exc)[:200]})") from None
    return _decode(source, uri)


def _decode(source: object, uri: str) -> Image.Image:
    """Decode ``source`` (a path or a file object) fully into RGB; ``uri`` names it in errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()  # decode now: truncated files fail here, not later in a worker
                return img.convert("RGB")
    except UnidentifiedImageError:
        raise ImageReadError(uri, "not an image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(uri, f"too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for truncated and damaged data
        raise ImageReadError(uri, f"truncated or corrupt ({str(exc)[:200]})") from None
