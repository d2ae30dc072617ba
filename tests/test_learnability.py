"""MiraGe learns a generator fingerprint on a frozen random tiny CLIP within 400 steps (the work
is bounded by steps, never by the clock: the run time is a benchmark matter)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fit_tiny
from miragedet import MiraGe, ModelConfig
from miragedet.data.synthetic import SEEN, make_set
from miragedet.evaluation.metrics import binary_metrics
from miragedet.training.step import predict_fake_prob


@pytest.mark.parametrize("method", ["mirage", "multimodal"])
def test_mirage_learns_the_fingerprint(tiny, method):
    size = tiny.preprocess.image_size
    images, labels = make_set(1000, size, SEEN, seed=1)
    test_images, test_labels = make_set(200, size, SEEN, seed=2)
    model = MiraGe(tiny, ModelConfig.for_method(method, depth=2))
    before = binary_metrics(
        test_labels, predict_fake_prob(model, tiny.preprocess.batch(test_images)).numpy()
    )
    model, history = fit_tiny(tiny, tiny.preprocess.batch(images), labels, 400, method, model)
    after = binary_metrics(
        test_labels, predict_fake_prob(model, tiny.preprocess.batch(test_images)).numpy()
    )
    assert after["accuracy"] >= 0.90, after
    assert before["accuracy"] < 0.75  # untrained: near chance, so the gain is learned
    assert min(after["real_accuracy"], after["fake_accuracy"]) >= 0.8
    losses = np.array([r.loss for r in history])
    # The bank fills within the first 4 steps; after that the loss must fall.
    assert losses[-50:].mean() < losses[5:55].mean()
