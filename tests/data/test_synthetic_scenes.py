"""The demo CLIP's pre-training scenes: deterministic, cached, captioned in their own phrases (never the tasks'
prompt templates), each caption naming properties the scene really has."""

from __future__ import annotations

import numpy as np
import pytest

from tsvmerge.data.datasets import synthetic_scenes as scenes
from tsvmerge.data.datasets.synthetic import SYNTHETIC_CLASSNAMES, SYNTHETIC_TEMPLATES


def test_same_bytes_for_a_seed_and_other_bytes_for_another() -> None:
    a_images, a_captions = scenes.generate_scenes(48, seed=0)
    b_images, b_captions = scenes.generate_scenes(48, seed=0)
    c_images, _ = scenes.generate_scenes(48, seed=1)
    assert a_images.shape == (48, 32, 32, 3) and a_images.dtype == np.uint8
    assert np.array_equal(a_images, b_images) and a_captions == b_captions
    assert not np.array_equal(a_images, c_images)


def test_captions_use_the_scenes_phrases_not_the_task_templates() -> None:
    _, captions = scenes.generate_scenes(400, seed=3)
    template_stems = {t.split("{}")[0] for templates in SYNTHETIC_TEMPLATES.values() for t in templates}
    for caption in captions:
        assert caption.endswith(".") and 1 <= len(caption.split()) <= 14
        assert not any(caption.startswith(stem) for stem in template_stems if len(stem) > 3), caption
    # Every task's concept is named somewhere: the concepts are learnable from the scenes.
    text = " ".join(captions)
    for word in ("digit", "letter", "shape", "color", "size", "at the", "stripes at", "dots"):
        assert word in text
    assert len(set(captions)) > 300  # mostly distinct captions: CLIP-like, not 80 repeated classes


def test_caption_names_exactly_the_chosen_attributes() -> None:
    attributes = {"object": 13, "color": 0, "size": 9, "position": 5, "stripes": 2, "count": 6}
    assert scenes.scene_caption(attributes, ("object", "color")) == "the digit 3 red color."
    assert scenes.scene_caption(attributes, ("count",)) == f"with {SYNTHETIC_CLASSNAMES['Counting'][6]} dots."
    assert scenes.scene_caption(attributes, ("position", "stripes")) == (
        "at the bottom far left stripes at 36 degrees.")


def test_named_colour_scenes_carry_that_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenes, "PALETTE_FRACTION", 1.0)
    monkeypatch.setattr(scenes, "STRIPES_FRACTION", 0.0)
    monkeypatch.setattr(scenes, "DOTS_FRACTION", 0.0)
    images, captions = scenes.generate_scenes(200, seed=5)
    red = [i for i, c in enumerate(captions) if "red color" in c]
    blue = [i for i, c in enumerate(captions) if "blue color" in c]
    assert red and blue
    # The brightest pixels of a red scene are red-dominant, of a blue one blue-dominant.
    def dominant(index: int) -> int:
        image = images[index].reshape(-1, 3).astype(float)
        top = image[np.argsort(image.sum(1))[-20:]]
        return int(np.argmax(top.mean(0)))
    assert sum(dominant(i) == 0 for i in red) >= 0.8 * len(red)
    assert sum(dominant(i) == 2 for i in blue) >= 0.8 * len(blue)


def test_cache_is_reused_and_regenerated_for_another_version(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, captions = scenes.load_scenes(tmp_path, 32, seed=2)
    assert scenes.scenes_path(tmp_path, 2).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(scenes, "generate_scenes", fail)
    again, again_captions = scenes.load_scenes(tmp_path, 32, seed=2)
    assert np.array_equal(images, again) and captions == again_captions
    monkeypatch.setattr(scenes, "SCENES_VERSION", scenes.SCENES_VERSION + 1)
    with pytest.raises(AssertionError, match="regenerated"):
        scenes.load_scenes(tmp_path, 32, seed=2)


def test_scenes_mix_every_task_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    from tsvmerge.data.datasets import synthetic_images as synthetic

    counts: dict[str, int] = {}
    original = synthetic._domain_backgrounds

    def spy(domain: str, rng: np.random.Generator, n: int) -> np.ndarray:
        counts[domain] = counts.get(domain, 0) + n
        return original(domain, rng, n)

    monkeypatch.setattr(synthetic, "_domain_backgrounds", spy)
    scenes.generate_scenes(800, seed=2)
    assert set(counts) == set(synthetic.DOMAINS) and sum(counts.values()) == 800
    assert min(counts.values()) >= 60  # about 100 each
