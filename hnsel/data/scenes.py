"""``scenes``: a finely-categorised synthetic image-caption dataset of hnsel's own.

Each image shows one to three objects in one or two groups. A group is (count, shape, colour, size,
texture, position); the tuple of groups is the image's fine *category*. Categories come in families:
a random base and siblings that differ from it in exactly one attribute, so near-identical scenes are
real fine-grained hard negatives. ``per_category`` images share each category (small jitter of place,
size and texture phase; different paraphrased captions): 1 gives a coverage-limited regime, many a
finely-categorised one. Output: ``OUTDIR/images/scene_NNNNNN.png`` and a Karpathy-style
``OUTDIR/dataset_scenes.json`` (train / val / test). Deterministic for a seed: every random choice
comes from ``np.random.Generator``s derived from it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from ..errors import InputError
from .scenes_text import describe
from ..tables import write_text_atomic

__all__ = ["generate_scenes", "ScenesReport", "sample_categories", "render_scene", "Group",
           "SHAPES", "COLOURS", "SIZES", "TEXTURES", "POSITIONS", "COUNTS", "JSON_NAME"]

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "ring")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 225), "yellow": (240, 215, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "white": (248, 248, 248), "black": (18, 18, 18),
    "pink": (245, 135, 195), "cyan": (40, 205, 215),
}
SIZES = {"small": 0.06, "medium": 0.085, "large": 0.115}  # radius as a fraction of the image side
TEXTURES = ("solid", "striped", "dotted", "outlined")
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
COUNTS = (1, 2, 3)
JSON_NAME = "dataset_scenes.json"
FAMILY_SIZE = 4  # a base category and up to three one-attribute siblings
Group = tuple  # (count, shape, colour, size, texture, position)
_ATTRS = {1: SHAPES, 2: tuple(COLOURS), 3: tuple(SIZES), 4: TEXTURES, 5: POSITIONS}


@dataclass(frozen=True)
class ScenesReport:
    out_dir: str
    json_path: str
    images: int
    categories: int
    families: int
    captions: int
    splits: dict
    seconds: float

    def summary(self) -> dict:
        return dict(self.__dict__)


# --------------------------------------------------------------------------------------------
# the grammar


def _valid(groups: tuple[Group, ...]) -> bool:
    if sum(g[0] for g in groups) > 3 or len({g[5] for g in groups}) != len(groups):
        return False
    return len({(g[1], g[2]) for g in groups}) == len(groups)  # groups tell apart by shape or colour


def _random_category(rng: np.random.Generator) -> tuple[Group, ...]:
    while True:
        n_groups = 1 if rng.random() < 0.5 else 2
        counts = [int(rng.choice(COUNTS))] if n_groups == 1 else [int(c) for c in ((1, 1), (1, 2), (2, 1))[rng.integers(3)]]
        groups = tuple(
            (c, *(str(values[rng.integers(len(values))]) for values in _ATTRS.values())) for c in counts
        )
        if _valid(groups):
            return tuple(sorted(groups, key=lambda g: POSITIONS.index(g[5])))


def _mutate(category: tuple[Group, ...], rng: np.random.Generator) -> tuple[Group, ...] | None:
    """The category with exactly one attribute of one group changed, or None if no valid change was found."""
    for _ in range(20):
        g = int(rng.integers(len(category)))
        attr = int(rng.integers(6))
        values = COUNTS if attr == 0 else _ATTRS[attr]
        new = values[rng.integers(len(values))]
        if new == category[g][attr]:
            continue
        group = category[g][:attr] + (new,) + category[g][attr + 1:]
        groups = category[:g] + (group,) + category[g + 1:]
        if _valid(groups):
            return tuple(sorted(groups, key=lambda x: POSITIONS.index(x[5])))
    return None


def sample_categories(n: int, rng: np.random.Generator) -> list[tuple[tuple[Group, ...], int]]:
    """``n`` distinct categories with their family index; siblings differ from the base in one attribute."""
    out: list[tuple[tuple[Group, ...], int]] = []
    seen: set = set()
    family = 0
    while len(out) < n:
        base = _random_category(rng)
        if base in seen:
            continue
        members = [base] + [_mutate(base, rng) for _ in range(FAMILY_SIZE - 1)]
        for member in members:
            if member is not None and member not in seen and len(out) < n:
                seen.add(member)
                out.append((member, family))
        family += 1
    return out


# --------------------------------------------------------------------------------------------
# rendering


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(k: int, radius: float, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(phase + 2 * math.pi * i / k), cy + radius * math.sin(phase + 2 * math.pi * i / k)) for i in range(k)]

    if shape == "square":
        return ring(4, r * 1.05, math.pi / 4)
    if shape == "triangle":
        return ring(3, r * 1.1)
    if shape == "hexagon":
        return ring(6, r)
    if shape == "diamond":
        return [(cx, cy - r * 1.1), (cx + r * 0.7, cy), (cx, cy + r * 1.1), (cx - r * 0.7, cy)]
    if shape == "star":
        outer, inner = ring(5, r * 1.15), ring(5, r * 0.48, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    a, b = r * 0.32, r  # cross: arms of half-width a and half-length b
    return [(cx - a, cy - b), (cx + a, cy - b), (cx + a, cy - a), (cx + b, cy - a), (cx + b, cy + a), (cx + a, cy + a),
            (cx + a, cy + b), (cx - a, cy + b), (cx - a, cy + a), (cx - b, cy + a), (cx - b, cy - a), (cx - a, cy - a)]


def _shape_mask(size: int, shape: str, cx: float, cy: float, r: float, outline: int | None) -> Image.Image:
    """L mask of a filled shape, or of its outline ``outline`` pixels wide."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape in ("circle", "ring"):
        draw.ellipse(box, fill=None if outline else 255, outline=255 if outline else None, width=outline or 0)
        if shape == "ring":
            ri = r * 0.55
            inner = (cx - ri, cy - ri, cx + ri, cy + ri)
            if outline:
                draw.ellipse(inner, outline=255, width=outline)
            else:
                draw.ellipse(inner, fill=0)
    else:
        points = _polygon(shape, cx, cy, r)
        if outline:
            draw.line(points + points[:1], fill=255, width=outline, joint="curve")
        else:
            draw.polygon(points, fill=255)
    return mask


def _pattern(side: int, texture: str, r: float, phase: float, angle: int) -> Image.Image:
    """Stripes (vertical or diagonal) or a dot grid over a ``side`` square patch, shifted by ``phase``."""
    period = max(4.0, r * 0.5)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    if texture == "striped":
        on = np.mod(x + angle * y + phase * period, period) < period * 0.45
    else:  # dotted
        dx = np.mod(x + phase * period, period) - period / 2
        dy = np.mod(y + phase * period, period) - period / 2
        on = dx * dx + dy * dy < (period * 0.28) ** 2
    return Image.fromarray(on.astype(np.uint8) * 255, "L")


def render_scene(category: tuple[Group, ...], size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``category`` with jittered place, size and texture phase (rendered 2x, then halved)."""
    big = size * 2
    shade = int(128 + rng.integers(-10, 11))
    canvas = Image.new("RGB", (big, big), (shade, shade, shade))
    for count, shape, colour, size_name, texture, position in category:
        row, col = divmod(POSITIONS.index(position), 3)
        r = SIZES[size_name] * big * (1 + rng.uniform(-0.08, 0.08))
        gx = (col + 0.5) / 3 * big + rng.uniform(-0.04, 0.04) * big
        gy = (row + 0.5) / 3 * big + rng.uniform(-0.04, 0.04) * big
        centres = np.array([(gx, gy)]) + np.array(_offsets(count, r, rng))
        margin = 1.2 * r + 1  # shift the whole group inside the canvas, keeping its spacing
        centres += np.maximum(0, margin - centres.min(axis=0)) - np.maximum(0, centres.max(axis=0) - (big - margin))
        for cx, cy in centres:
            _draw_object(canvas, shape, COLOURS[colour], texture, float(cx), float(cy), r, rng)
    return canvas.reduce(2)


def _offsets(count: int, r: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    if count == 1:
        return [(0.0, 0.0)]
    gap = r * 1.1  # centres 2.2 r apart: objects of a group never overlap
    if count == 2:
        return [(-gap, 0.0), (gap, 0.0)] if rng.random() < 0.5 else [(0.0, -gap), (0.0, gap)]
    return [(-gap, gap * 0.87), (gap, gap * 0.87), (0.0, -gap * 0.87)]


def _draw_object(canvas: Image.Image, shape: str, rgb: tuple, texture: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> None:
    """Draw one object through a mask on a patch around it (masks of the whole canvas are slow)."""
    half = int(r * 1.25) + 3
    x0, y0 = int(cx) - half, int(cy) - half
    side, lx, ly = 2 * half, cx - x0, cy - y0
    line = max(2, int(r * 0.16))
    if texture == "solid":
        mask = _shape_mask(side, shape, lx, ly, r, None)
    elif texture == "outlined":
        mask = _shape_mask(side, shape, lx, ly, r, line)
    else:
        fill = ImageChops.multiply(_shape_mask(side, shape, lx, ly, r, None), _pattern(side, texture, r, float(rng.random()), int(rng.integers(-1, 2))))
        mask = ImageChops.lighter(fill, _shape_mask(side, shape, lx, ly, r, max(2, line // 2)))
    canvas.paste(rgb, (x0, y0, x0 + side, y0 + side), mask)


# --------------------------------------------------------------------------------------------
# the dataset


def _check(n: int, per_category: int, image_size: int, captions: int, val: float, test: float) -> None:
    if n < 1:
        raise InputError(f"--n {n}: generate at least one image")
    if not 1 <= per_category <= 50:
        raise InputError(f"--per-category {per_category}: use 1 to 50 images per fine category")
    if not 64 <= image_size <= 128:
        raise InputError(f"--image-size {image_size}: use 64 to 128 pixels")
    if not 1 <= captions <= 20:
        raise InputError(f"--captions {captions}: use 1 to 20 captions per image")
    if val < 0 or test < 0 or val + test >= 1:
        raise InputError(f"--val {val} and --test {test}: fractions must be >= 0 and leave some train images")


def _entries(n: int, seed: int, per_category: int, captions: int) -> Iterator[tuple[int, tuple, int, int, list[str]]]:
    """(image index, category, category index, family, captions) in image order."""
    categories = sample_categories(math.ceil(n / per_category), np.random.default_rng([seed, 0]))
    for i in range(n):
        category, family = categories[i // per_category]
        rng = np.random.default_rng([seed, 2, i])
        yield i, category, i // per_category, family, describe(category, captions, rng)


def _splits(n: int, val: float, test: float, seed: int) -> list[str]:
    order = np.random.default_rng([seed, 1]).permutation(n)
    n_val, n_test = int(round(n * val)), int(round(n * test))
    labels = ["train"] * n
    for rank, index in enumerate(order):
        labels[index] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return labels


def generate_scenes(out_dir: str | os.PathLike, n: int = 1000, seed: int = 0, *, per_category: int = 1, image_size: int = 96,
                    captions: int = 5, val: float = 0.1, test: float = 0.1, on_progress=None) -> ScenesReport:
    """Render ``n`` scenes into ``out_dir`` and write the Karpathy-style JSON beside them."""
    _check(n, per_category, image_size, captions, val, test)
    start = time.perf_counter()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = _splits(n, val, test, seed)
    images, families = [], set()
    for i, category, cat_index, family, texts in _entries(n, seed, per_category, captions):
        name = f"scene_{i:06d}"
        render_scene(category, image_size, np.random.default_rng([seed, 3, i])).save(out / "images" / f"{name}.png", compress_level=1)
        families.add(family)
        sentences = [{"raw": t, "tokens": t.replace(",", "").replace(";", "").split(), "imgid": i, "sentid": i * captions + k} for k, t in enumerate(texts)]
        objects = [dict(zip(("count", "shape", "colour", "size", "texture", "position"), g)) for g in category]
        images.append({"filepath": "images", "filename": f"{name}.png", "imgid": i, "split": splits[i], "category": cat_index,
                       "family": family, "objects": objects, "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
        if on_progress is not None and (i + 1) % 100 == 0:
            on_progress("rendering scenes", i + 1, n)
    doc = {"dataset": "scenes", "seed": seed, "per_category": per_category, "image_size": image_size, "images": images}
    json_path = out / JSON_NAME
    write_text_atomic(json_path, json.dumps(doc, separators=(",", ":")))
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    return ScenesReport(str(out), str(json_path), n, math.ceil(n / per_category), len(families), n * captions, counts, time.perf_counter() - start)
