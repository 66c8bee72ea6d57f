"""Pooled test metrics: the accuracy is the exact fraction of correct samples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shoal.evaluate import pooled, predict
from shoal.functional import ParamSpec, cross_entropy


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_accuracy_is_the_exact_count_over_the_size(dtype) -> None:
    # 950 of 1,000: a float32 mean gives 0.94999999, below a 95% target.
    correct = torch.zeros(1000, dtype=dtype)
    correct[:950] = 1
    loss, acc = pooled(torch.full((1000,), 0.5), correct)
    assert acc == 0.95 and acc >= 0.95
    assert loss == 0.5
    for right in range(0, 1001, 37):  # every count is its own exact fraction
        c = torch.arange(1000) < right
        assert pooled(torch.zeros(1000), c)[1] == right / 1000


def test_no_samples_give_nan() -> None:
    loss, acc = pooled(torch.zeros(0), torch.zeros(0, dtype=torch.bool))
    assert math.isnan(loss) and math.isnan(acc)


def test_no_rows_are_scored_as_no_samples() -> None:
    # predict on an empty test set failed in torch.cat, after round 1's training.
    model = nn.Linear(3, 2)
    spec = ParamSpec.of(model)
    loss_N, correct_N = predict(
        model, spec, spec.flatten(model), torch.zeros(0, 3), torch.zeros(0).long(), cross_entropy
    )
    assert loss_N.shape == correct_N.shape == (0,) and correct_N.dtype == torch.bool
    assert all(math.isnan(v) for v in pooled(loss_N, correct_N))


def test_a_float64_models_loss_keeps_float64_precision() -> None:
    # It was cast to float32: 2.2519159317 reported for 2.2519159794.
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    spec = ParamSpec.of(model)
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    loss_N, _ = predict(model, spec, spec.flatten(model), x, y, cross_entropy, batch_size=7)
    reference = nn.functional.cross_entropy(model(x), y, reduction="none")
    assert loss_N.dtype == torch.float64
    torch.testing.assert_close(loss_N, reference.detach(), rtol=0, atol=1e-15)
