"""Frozen features computed once: the same head as training from pixels, and reused by reruns."""

from __future__ import annotations

import torch

from miragedet.data.synthetic import write_layout
from miragedet.training.config import TrainConfig
from miragedet.training.trainer import Trainer

BASE = dict(backbone="tiny", batch_size=16, epochs=3, lr=0.05, workers=0, log_every=1, depth=2)


def _train(data, output, **kw) -> Trainer:
    trainer = Trainer(TrainConfig(data=str(data), output=str(output), **{**BASE, **kw}))
    trainer.fit()
    return trainer


def test_cached_linear_probe_equals_the_uncached_one_and_a_rerun_reuses_the_cache(tmp_path):
    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=32)
    (data / "real" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    plain = _train(data, tmp_path / "plain", method="linear-probe", cache_features=False)
    cached = _train(data, tmp_path / "cached", method="linear-probe")
    assert plain.features is None and cached.features is not None
    assert cached.features_computed == 64  # every readable image encoded once, not per epoch
    for name in ("weight", "bias"):
        torch.testing.assert_close(
            getattr(cached.model.head, name), getattr(plain.model.head, name), atol=1e-5, rtol=0
        )
    assert [h["loss"] for h in cached.history if h["type"] == "train"] == pytest_approx(
        [h["loss"] for h in plain.history if h["type"] == "train"]
    )
    assert any(p.endswith("broken.jpg") for p, _ in cached.skipped)
    again = _train(data, tmp_path / "cached", method="linear-probe")
    assert again.features_computed == 0  # the cache beside the run was reused
    torch.testing.assert_close(again.model.head.weight, cached.model.head.weight)
    # a changed image is a new cache
    (data / "grid-2" / "00001.png").write_bytes((data / "grid-2" / "00003.png").read_bytes())
    assert _train(data, tmp_path / "cached", method="linear-probe").features_computed == 64


def test_methods_whose_features_train_never_use_the_cache(tmp_path):
    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=16)
    mirage = Trainer(
        TrainConfig(data=str(data), output=str(tmp_path / "m"), method="mirage", **BASE)
    )
    assert not mirage.can_cache_features()  # vision prompts change the features every step
    augmented = Trainer(
        TrainConfig(
            data=str(data),
            output=str(tmp_path / "a"),
            method="linear-probe",
            augment="robust",
            **BASE,
        )
    )
    assert not augmented.can_cache_features()  # random augmentations: new pixels every epoch
    coop = Trainer(
        TrainConfig(data=str(data), output=str(tmp_path / "t"), method="text-prompts", **BASE)
    )
    assert coop.can_cache_features()  # text prompts leave the image side frozen


def pytest_approx(values):
    import pytest

    return pytest.approx(values, abs=1e-5)


def test_evaluate_scores_a_frozen_model_from_cached_features(served_checkpoint, tmp_path):
    import numpy as np

    from miragedet import MiraGe, ModelConfig, load_backbone
    from miragedet.data.layouts import find_images
    from miragedet.evaluation.evaluate import evaluate_dataset
    from miragedet.evaluation.scores import score_samples

    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=12)
    (data / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("linear-probe"))
    samples = find_images(data).samples
    plain = score_samples(model, samples, batch_size=8)
    cached = score_samples(model, samples, batch_size=8, cache_dir=tmp_path / "cache")
    assert model.features_computed == 24
    np.testing.assert_allclose(cached.probs, plain.probs, atol=1e-6)  # NaN rows alike
    assert cached.errors.keys() == plain.errors.keys()
    again = score_samples(model, samples, batch_size=8, cache_dir=tmp_path / "cache")
    assert model.features_computed == 0 and np.allclose(again.probs, cached.probs, equal_nan=True)
    first = evaluate_dataset(model, data, tmp_path / "eval", workers=0)
    assert model.features_computed == 24 and (tmp_path / "eval" / "features").is_dir()
    second = evaluate_dataset(model, data, tmp_path / "eval", workers=0)
    assert model.features_computed == 0 and second["clean"] == first["clean"]
    # MiraGe's own features train: never cached
    mirage = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    score_samples(mirage, samples, batch_size=8, cache_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists()
