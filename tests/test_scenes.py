"""The scenes generator: deterministic, fine categories, one-attribute siblings, faithful captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hnsel.data import load_source
from hnsel.data.scenes import COLOURS, POSITIONS, generate_scenes, render_scene, sample_categories
from hnsel.data.scenes_text import _NOUN, _SIZE, _TEXTURE_POST, _TEXTURE_PRE, _WHERE, describe
from hnsel.errors import InputError

ATTRS = ("count", "shape", "colour", "size", "texture", "position")


def _doc(report):
    return json.loads(open(report.json_path).read())


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = generate_scenes(tmp_path / "a", n=12, seed=3, per_category=2, image_size=64)
    generate_scenes(tmp_path / "b", n=12, seed=3, per_category=2, image_size=64)
    c = generate_scenes(tmp_path / "c", n=12, seed=4, per_category=2, image_size=64)
    assert (tmp_path / "a" / "dataset_scenes.json").read_bytes() == (tmp_path / "b" / "dataset_scenes.json").read_bytes()
    for i in range(12):
        name = f"images/scene_{i:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert _doc(a)["images"][0]["objects"] != _doc(c)["images"][0]["objects"] or \
        (tmp_path / "a/images/scene_000000.png").read_bytes() != (tmp_path / "c/images/scene_000000.png").read_bytes()
    assert a.images == 12 and a.categories == 6 and a.captions == 60


@pytest.mark.parametrize("per_category", [1, 4])
def test_per_category_images_share_a_category_with_different_pixels_and_captions(tmp_path, per_category):
    report = generate_scenes(tmp_path, n=8, seed=0, per_category=per_category, image_size=64, captions=3)
    images = _doc(report)["images"]
    assert [im["category"] for im in images] == [i // per_category for i in range(8)]
    assert report.categories == 8 // per_category
    by_category: dict = {}
    for im in images:
        by_category.setdefault(im["category"], []).append(im)
    for members in by_category.values():
        assert all(m["objects"] == members[0]["objects"] for m in members)
        pixels = {Image.open(tmp_path / "images" / m["filename"]).tobytes() for m in members}
        assert len(pixels) == len(members)  # jitter: no two renders are identical
        for m in members:
            assert len({s["raw"] for s in m["sentences"]}) == 3


def test_families_hold_one_attribute_siblings():
    categories = sample_categories(60, np.random.default_rng(0))
    assert len({c for c, _ in categories}) == 60
    families: dict = {}
    for category, family in categories:
        families.setdefault(family, []).append(category)
    with_siblings = [members for members in families.values() if len(members) > 1]
    assert len(with_siblings) >= 5
    for base, *siblings in with_siblings:
        for sibling in siblings:
            assert sibling != base and _one_attribute_apart(base, sibling)


def _one_attribute_apart(a, b) -> bool:
    """Some group of ``a`` changed in exactly one attribute gives ``b`` (groups are sorted by position)."""
    for i, group in enumerate(a):
        for k, other in enumerate(b):
            if sum(x != y for x, y in zip(group, other)) == 1 and [g for n, g in enumerate(a) if n != i] == [g for n, g in enumerate(b) if n != k]:
                return True
    return False


def test_captions_state_every_attribute():
    rng = np.random.default_rng(1)
    for category, _ in sample_categories(40, np.random.default_rng(2)):
        for caption in describe(category, 5, rng):
            for count, shape, colour, size, texture, position in category:
                assert colour in caption  # colour is never paraphrased
                assert any(word in caption for word in _SIZE[size])
                assert any(word in caption for word in _TEXTURE_PRE[texture] + _TEXTURE_POST[texture])
                assert any(noun[0 if count == 1 else 1] in caption for noun in _NOUN[shape])
                assert any(where in caption for where in _WHERE[position])
            assert " a o" not in caption and " a a" not in caption  # "an orange", "an outlined"


def test_render_puts_colour_where_the_grammar_says():
    category = ((1, "square", "red", "large", "solid", "top left"),)
    image = np.asarray(render_scene(category, 96, np.random.default_rng(0))).astype(int)
    red = (np.abs(image - np.array(COLOURS["red"])).sum(axis=2) < 60)
    ys, xs = np.nonzero(red)
    assert red.sum() > 100
    assert xs.mean() < 40 and ys.mean() < 40 and POSITIONS[0] == "top left"


def test_karpathy_json_loads_with_splits(tmp_path):
    report = generate_scenes(tmp_path, n=20, seed=0, image_size=64, captions=2, val=0.1, test=0.2)
    assert report.splits == {"train": 14, "val": 2, "test": 4}
    ds = load_source(report.json_path)
    assert len(ds.images) == 20 and all(r.pool == "paired" and len(r.captions) == 2 for r in ds.images)
    assert sorted(r.id for r in ds.split("test").images) == sorted(im["filename"][:-4] for im in _doc(report)["images"] if im["split"] == "test")
    assert Image.open(ds.images[0].uri).size == (64, 64)


@pytest.mark.parametrize("kwargs, message", [
    ({"per_category": 0}, "--per-category 0"), ({"per_category": 51}, "--per-category 51"),
    ({"image_size": 32}, "--image-size 32"), ({"n": 0}, "--n 0"), ({"val": 0.5, "test": 0.5}, "--val"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        generate_scenes(tmp_path, **{"n": 4, **kwargs})
