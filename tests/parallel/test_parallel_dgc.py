"""Data-parallel DGC against a per-step reference written with autograd and exact top-k, and
at density 1 against synchronous momentum SGD."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shoal.compress import serialize
from shoal.parallel import dgc, sync_sgd

from .cases import TINY_SHAPES, shards, tiny_data, tiny_model
from .test_parallel_algorithms import _run

FULL = 200  # a batch larger than every shard: the whole shard, so gradients are deterministic


def reference(world, lr, momentum, densities, clip_norm=None):
    """DGC per step, as the paper describes it, on every worker's whole shard."""
    model, data, parts = tiny_model(), tiny_data(), shards(world)
    params = dict(model.named_parameters())
    u = [{k: torch.zeros_like(p) for k, p in params.items()} for _ in parts]
    v = [{k: torch.zeros_like(p) for k, p in params.items()} for _ in parts]
    for density in densities:
        sent = {k: torch.zeros_like(p) for k, p in params.items()}
        for w, shard in enumerate(parts):
            idx = torch.from_numpy(shard)
            model.zero_grad()
            F.cross_entropy(model(data.train.x[idx]), data.train.y[idx]).backward()
            grads = {k: p.grad.clone() for k, p in params.items()}
            if clip_norm is not None:
                norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
                scale = min(1.0, clip_norm / math.sqrt(world) / (float(norm) + 1e-6))
                grads = {k: g * scale for k, g in grads.items()}
            for k, p in params.items():
                u[w][k] = momentum * u[w][k] + grads[k]
                if p.dim() <= 1:  # biases: dense, the momentum itself
                    sent[k] += u[w][k] / world
                    continue
                v[w][k] = v[w][k] + u[w][k]
                flat_v = v[w][k].view(-1)
                top = torch.topk(flat_v.abs(), math.ceil(density * flat_v.numel())).indices
                sent[k].view(-1)[top] += flat_v[top] / world
                flat_v[top] = 0
                u[w][k].view(-1)[top] = 0  # momentum factor masking
        with torch.no_grad():
            for k, p in params.items():
                p -= lr * sent[k]
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


@pytest.mark.parametrize("clip_norm", [0.0, 0.5])
def test_matches_a_per_step_reference(clip_norm):
    # Exact top-k (sample_ratio 1) and a warm-up of two 2-step epochs: 1/4, 1/4, then 0.1.
    alg = dgc(
        0.5, TINY_SHAPES, density=0.1, sample_ratio=1.0, warmup_epochs=2, epoch_steps=2,
        clip_norm=clip_norm,
    )  # fmt: skip
    got = _run(alg, world=3, steps=6, batch_size=FULL)
    densities = [0.25, 0.25, 0.1, 0.1, 0.1, 0.1]
    expected = reference(3, 0.5, 0.9, densities, clip_norm or None)
    for row in got.params_WD:  # every replica holds the same model
        torch.testing.assert_close(row, expected, rtol=0, atol=1e-5)


def test_density_one_without_masking_is_synchronous_momentum_sgd():
    alg = dgc(0.2, TINY_SHAPES, 1.0, 0.9, momentum_masking=False, warmup_epochs=0)
    got = _run(alg, world=4, steps=8)
    want = _run(sync_sgd(0.2, momentum=0.9), world=4, steps=8)
    torch.testing.assert_close(got.params_WD, want.params_WD, rtol=0, atol=1e-5)


def test_bytes_are_the_serialized_messages():
    alg = dgc(0.2, TINY_SHAPES, density=0.1, sample_ratio=1.0, warmup_epochs=0)
    sent = _run(alg, world=2, steps=1, batch_size=FULL).metrics[-1]["bytes_sent"]
    # A step's message: ceil(0.1 * 48) = 5 and ceil(0.1 * 24) = 3 (value, index) pairs in the
    # weight tensors, the 8 + 3 biases dense; its length depends on those counts alone.
    message = torch.zeros(sum(math.prod(s) for s in TINY_SHAPES))
    message[[0, 7, 9, 30, 47]] = 1.5  # weight 0: entries 0..47
    message[48:56] = 0.5  # bias 0
    message[[56, 60, 79]] = -2.0  # weight 1: entries 56..79
    message[80:83] = 0.25  # bias 1
    encoding = alg.rule.default_compressor
    payload, _ = encoding.compress(message, encoding.init(message))
    assert sent == 2 * len(serialize(payload))  # both workers' messages, all-gathered
    assert sent < 2 * 4 * len(message)  # fewer than the dense gradients, framing included


def test_the_warm_up_needs_its_epoch_length():
    with pytest.raises(ValueError, match="epoch_steps"):
        dgc(0.1, TINY_SHAPES)  # four warm-up epochs of unknown length
    assert dgc(0.1, TINY_SHAPES, warmup_epochs=0).rule.density_at(0) == 0.001
    assert dgc(0.1, TINY_SHAPES, epoch_steps=3).rule.density_at(2) == 0.25
