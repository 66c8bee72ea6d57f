"""ParamSpec layout, init_params seeding, cross_entropy and batch_loss masks, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shoal.functional import ParamSpec, batch_loss, cross_entropy, init_params


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_flat_vector_is_named_parameters_in_module_order() -> None:
    # the layout of torch.nn.utils.parameters_to_vector, so flat vectors, checkpoints and
    # state dicts agree on which entry is which parameter
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model.add_module("10", nn.Linear(2, 5))  # "10" sorts before "2" as text
    spec = ParamSpec.of(model)
    assert spec.names == tuple(n for n, _ in model.named_parameters())
    flat = spec.flatten(model)
    expect = torch.nn.utils.parameters_to_vector(model.parameters())
    assert torch.equal(flat, expect)
    named = spec.unflatten(flat)
    assert all(torch.equal(named[n], p) for n, p in model.named_parameters())


def test_frozen_parameters_are_not_in_the_vector() -> None:
    first = nn.Linear(3, 4)
    model = nn.Sequential(first, nn.ReLU(), nn.Linear(4, 2))
    first.weight.requires_grad_(False)
    spec = ParamSpec.of(model)
    assert spec.names == ("0.bias", "2.weight", "2.bias")
    assert spec.num_params == 4 + 8 + 2 and spec.offsets == (0, 4, 12)


def test_a_flat_vector_of_another_length_is_refused() -> None:
    # A longer one lost its tail silently (load_into too); a shorter one failed in a view.
    model = small()
    spec = ParamSpec.of(model)
    for bad in (torch.zeros(spec.num_params + 5), torch.zeros(spec.num_params - 1)):
        with pytest.raises(ValueError, match=f"a flat vector of {spec.num_params} parameters"):
            spec.load_into(model, bad)
    assert spec.unflatten(torch.zeros(3, spec.num_params))["0.weight"].shape == (3, 4, 3)


def test_init_params_is_the_seeded_build_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expect_model = small()
    torch.manual_seed(999)  # the caller's own stream, which init_params must not move
    before = torch.random.get_rng_state()
    model, flat = init_params(small, seed=123)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(flat, ParamSpec.of(expect_model).flatten(expect_model))
    assert torch.equal(ParamSpec.of(model).flatten(model), flat)
    other = init_params(small, seed=124)[1]
    assert not torch.equal(other, flat)


def test_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0], [5.0, 0.0]])
    targets = torch.tensor([1, 0, 1])
    # -log softmax at the target: -log(3/4), -log(1/2), -log(e^0 / (e^5 + 1))
    expect = torch.tensor([-math.log(0.75), math.log(2.0), math.log(math.exp(5.0) + 1.0)])
    torch.testing.assert_close(cross_entropy(logits, targets), expect)


def test_batch_loss_averages_over_the_real_rows_only() -> None:
    model = nn.Linear(2, 2, bias=False)
    named = {"weight": torch.eye(2)}  # logits = x
    x = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0], [9.0, -9.0], [1.0, 1.0]])
    y = torch.tensor([1, 0, 1, 0])
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])  # the last two rows are padding
    loss = batch_loss(model, cross_entropy, named, x, y, mask)
    expect = (-math.log(0.75) + math.log(2.0)) / 2
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    assert batch_loss(model, cross_entropy, named, x, y, torch.zeros(4)).item() == 0.0
