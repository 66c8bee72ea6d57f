"""Gradient buckets handed over during the backward pass: synchronous SGD's all-reduce
overlapping the backward pass, as PyTorch DDP's."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shoal.functional import ParamSpec, cross_entropy
from shoal.models import cnn
from shoal.parallel import SimComm, sync_sgd, train_parallel
from shoal.parallel.base import Buckets, bucket_ranges
from shoal.parallel.batches import Gradients, LocalBatches
from shoal.parallel.messages import dense_nbytes

from .cases import DIM, config, shards, tiny_data, tiny_model

TINY_NUMELS, TINY_OFFSETS = [48, 8, 24, 3], [0, 48, 56, 80]  # Linear(6, 8), Linear(8, 3)


def test_buckets_follow_ddps_rule_by_hand():
    # Reverse order; a bucket closes once it holds the cap (the first one's cap first):
    # 12 B + 96 B >= 32 closes (56, 83); the 32 B bias alone closes; then the 192 B weight.
    assert bucket_ranges(TINY_NUMELS, TINY_OFFSETS, 32, 32) == [(56, 83), (48, 56), (0, 48)]
    assert bucket_ranges(TINY_NUMELS, TINY_OFFSETS, 10**9, 100) == [(56, 83), (0, 56)]
    assert bucket_ranges(TINY_NUMELS, TINY_OFFSETS, 10**9, 10**9) == [(0, 83)]


def test_the_cnn_gets_the_buckets_ddp_rebuilds():
    # torch 2.13's DistributedDataParallel on this CNN, default caps, after its first
    # iteration (``_get_ddp_logging_data()["rebuilt_bucket_sizes"]``): "6445096, 208384",
    # the head and the fully connected layer, then both convolutions.
    spec = ParamSpec.of(cnn())
    numels = [math.prod(s) for s in spec.shapes]
    ranges = bucket_ranges(numels, spec.offsets, 25 * 2**20, 2**20)
    assert [4 * (hi - lo) for lo, hi in ranges] == [6445096, 208384]
    assert ranges[-1][0] == 0 and ranges[0][1] == spec.num_params


class _Mark(nn.Module):
    """Identity that logs when the backward pass reaches it (between the two layers)."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x.register_hook(lambda g: self.log.append("between the layers"))
        return x


def _gradients(model: nn.Module, workers: int, vectorize: bool) -> Gradients:
    data = tiny_data()
    batches = LocalBatches(
        data.train.x, data.train.y, shards(workers), range(workers), 16, 3, torch.device("cpu")
    )
    spec = ParamSpec.of(model)
    return Gradients(model, spec, cross_entropy, batches, *batches.index(0), vectorize)


@pytest.mark.parametrize("workers,vectorize", [(1, False), (3, False), (3, True)])
def test_buckets_are_handed_over_final_and_during_the_backward_pass(workers, vectorize):
    log: list[str] = []
    model = nn.Sequential(nn.Linear(DIM, 8), _Mark(log), nn.Tanh(), nn.Linear(8, 3))
    at_WD = ParamSpec.of(model).flatten(model).expand(workers, -1).clone()
    whole_WD = _gradients(model, workers, vectorize)(at_WD)
    log.clear()
    handed: dict[tuple[int, int], torch.Tensor] = {}

    def ready(grads_WD: torch.Tensor, lo: int, hi: int) -> None:
        log.append(f"bucket {lo}:{hi}")
        handed[lo, hi] = grads_WD[:, lo:hi].clone()

    got_WD = _gradients(model, workers, vectorize)(at_WD, Buckets(ready, 32, 32))
    torch.testing.assert_close(got_WD, whole_WD, rtol=0, atol=0)
    buckets = [m for m in log if m.startswith("bucket")]
    assert buckets == ["bucket 56:83", "bucket 48:56", "bucket 0:48"]
    if not vectorize:  # (a tensor hook cannot be set inside vmap's forward)
        # The second layer's bucket goes before the backward pass reaches the first layer (the
        # last worker's, in a loop over workers); the first layer's, after.
        mark = max(i for i, m in enumerate(log) if m == "between the layers")
        assert log.index("bucket 56:83") < mark < log.index("bucket 48:56")
    for (lo, hi), handed_WB in handed.items():  # final when handed over
        torch.testing.assert_close(handed_WB, whole_WD[:, lo:hi], rtol=0, atol=0)
    assert sorted(handed) == [(0, 48), (48, 56), (56, 83)]


def test_a_float64_models_buckets_count_its_8_byte_entries():
    # DDP's caps are in bytes: a float64 gradient fills one with half the entries. Counted at
    # 4 bytes an entry, a 64-byte cap put both of the second layer's tensors in one bucket.
    model = nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    data, spec = tiny_data(), ParamSpec.of(model)
    batches = LocalBatches(
        data.train.x.double(), data.train.y, shards(1), range(1), 16, 3, torch.device("cpu")
    )
    grads = Gradients(model, spec, cross_entropy, batches, *batches.index(0), False)
    handed: list[tuple[int, int]] = []
    grads(spec.flatten(model)[None], Buckets(lambda g, lo, hi: handed.append((lo, hi)), 64, 64))
    assert handed == [(56, 83), (48, 56), (0, 48)]  # 216 B, then the 64 B bias alone
    assert bucket_ranges(TINY_NUMELS, TINY_OFFSETS, 64, 64) == [(56, 83), (0, 56)]  # float32


@pytest.mark.parametrize("cap_mb", [32 / 2**20, 25.0])
def test_overlapped_sync_sgd_is_the_all_reduce_after_the_backward_bit_for_bit(cap_mb):
    def run(**kw):
        alg = sync_sgd(0.2, momentum=0.9, **kw)
        cfg = config(steps=4, eval_every=4)
        return train_parallel(tiny_model(), tiny_data(), shards(3), alg, cfg, SimComm(3))

    after, overlapped = run(overlap=False), run(bucket_cap_mb=cap_mb)
    torch.testing.assert_close(overlapped.params_WD, after.params_WD, rtol=0, atol=0)
    assert overlapped.summary["total_bytes_sent"] > 0
    # The same bytes, in more messages when there are several buckets.
    extra = {32 / 2**20: 2 * 3 * 4 * dense_nbytes(torch.zeros(0)), 25.0: 0}[cap_mb]
    assert overlapped.summary["total_bytes_sent"] == after.summary["total_bytes_sent"] + extra


def test_bad_bucket_settings_are_refused():
    with pytest.raises(ValueError, match="bucket_cap_mb must be a positive number"):
        sync_sgd(0.1, bucket_cap_mb=0)
    with pytest.raises(TypeError, match="overlap must be true or false"):
        sync_sgd(0.1, overlap="yes")  # type: ignore[arg-type]


def test_a_stragglers_events_all_happen_factor_times_later(monkeypatch):
    import shoal.parallel.batches as batches

    clock = [0.0]
    monkeypatch.setattr(batches.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(batches.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    stretch = batches.Stretch(3.0)
    stretch.start()
    seen = []
    for work in (1.0, 0.5, 2.0):  # seconds of compute, then a bucket handed over
        clock[0] += work
        stretch()
        seen.append(stretch.elapsed())
    assert seen == pytest.approx([3.0, 4.5, 10.5])  # 3x the work done by each event
    stretch()  # nothing more owed
    assert stretch.elapsed() == pytest.approx(10.5)
    plain = batches.Stretch(1.0)
    plain.start()
    clock[0] += 2.0
    plain()
    assert plain.elapsed() == pytest.approx(2.0)


def test_a_layer_used_twice_is_handed_over_once_with_its_summed_gradient():
    shared = nn.Linear(DIM, DIM)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(DIM, 3))
    at_WD = ParamSpec.of(model).flatten(model).expand(2, -1).clone()
    whole_WD = _gradients(model, 2, False)(at_WD)
    calls: list[tuple[int, int]] = []
    got_WD = _gradients(model, 2, False)(
        at_WD, Buckets(lambda g, lo, hi: calls.append((lo, hi)), 4, 4)
    )
    torch.testing.assert_close(got_WD, whole_WD, rtol=0, atol=0)
    assert (
        sorted(calls) == sorted(set(calls)) and sum(hi - lo for lo, hi in calls) == at_WD.shape[1]
    )


class _Spares(nn.Module):
    """``tiny_model`` and twelve layers its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_model()
        self.spares = nn.ModuleList(nn.Linear(2, 2, bias=False) for _ in range(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_unused_parameters_buckets_go_in_the_parameters_order():
    # Each process must start the same collectives in the same order; a set's order of the
    # spare layers' names follows string hashing, which differs between processes.
    model = _Spares()
    at_WD = ParamSpec.of(model).flatten(model).expand(2, -1).clone()
    order: list[int] = []
    grads_WD = _gradients(model, 2, False)(at_WD, Buckets(lambda g, lo, hi: order.append(lo), 1, 1))
    spares = order[-12:]  # after the backward pass, one bucket of 16 bytes each
    assert spares == sorted(spares, reverse=True) or spares == sorted(spares)
    assert len(set(spares)) == 12 and not grads_WD[:, 83:].any()
