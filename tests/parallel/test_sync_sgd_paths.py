"""Synchronous SGD's compressed and bucketed paths against independent references."""

from __future__ import annotations

import warnings

import pytest
import torch

from shoal.compress import error_feedback, powersgd, random_k, top_k
from shoal.compress.base import Payload
from shoal.functional import ParamSpec
from shoal.parallel import SimComm, local_sgd, sync_sgd
from shoal.parallel.algorithms.sync_sgd import (
    FIRST_BUCKET_BYTES,
    compressed_mean,
    compressor_states,
)
from shoal.parallel.base import Buckets
from shoal.parallel.messages import sum_floats

from .cases import ZeroGrad, tiny_model


def _rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_random_k_summed_compressed_is_the_mean_on_one_shared_mask():
    """Random-k with a shared seed is summed in compressed form: every worker keeps the same
    k coordinates, so the mean is the exact mean there and zero elsewhere."""
    n, d = 3, 40
    rows = _rows(n, d)
    comm = SimComm(n)
    c = random_k(0.25)
    start = compressor_states(c, rows, comm)
    assert start["reduce"] == "sum"
    mean_WD, _ = compressed_mean(c, rows, start["compressor"], comm, start["reduce"])
    kept = mean_WD[0] != 0
    assert int(kept.sum()) == 10
    torch.testing.assert_close(mean_WD[0][kept], rows.mean(0)[kept], rtol=0, atol=1e-6)
    # Each worker's own message keeps the same coordinates (the seed is shared).
    for row, s in zip(rows, start["compressor"]):
        assert torch.equal(c.decompress(c.compress(row, s)[0]) != 0, kept)


def test_homomorphic_payloads_travel_in_one_all_reduce():
    """Summable payloads are all-reduced compressed (one all-reduce per step), not
    all-gathered and decompressed one by one (which the cost model charges differently)."""
    rows = _rows(4, 40)
    comm = SimComm(4)
    c = random_k(0.25)
    start = compressor_states(c, rows, comm)
    compressed_mean(c, rows, start["compressor"], comm, start["reduce"])
    assert [e.kind for e in comm.exchanges] == ["all_reduce"]


class _OneOfFour:
    """One process of a 4-process job (W = 1, N = 4) whose three other workers happen to
    send the same payload (no processes spawned)."""

    world_size = 4
    workers = (0,)

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.exchanges: list = []

    def all_gather_payloads(self, payloads: list[Payload], codec_elements: int = 0):
        return list(payloads) * 4

    def all_reduce_payloads(self, payloads: list[Payload], codec_elements: int = 0) -> Payload:
        return sum_floats(list(payloads) * 4)


def test_one_process_of_a_job_averages_compressed_gradients_over_the_whole_world():
    """Four identical workers average to what one worker alone gives: the mean divides by the
    job's N, not by the process's one local worker (gathered top-k, PowerSGD's all-reduce)."""
    spec = ParamSpec.of(tiny_model())
    row = _rows(1, spec.num_params, seed=1)
    cases = {
        "all_gather": top_k(ratio=0.3),
        "two_round": error_feedback(powersgd(spec.shapes, rank=1)),
    }
    for reduce, c in cases.items():
        alone = SimComm(1)
        own = compressor_states(c, row, alone, reduce)
        ref, _ = compressed_mean(c, row, own["compressor"], alone, own["reduce"])
        comm = _OneOfFour()
        start = compressor_states(c, row, comm, reduce)  # type: ignore[arg-type]
        got, _ = compressed_mean(c, row, start["compressor"], comm, start["reduce"])  # type: ignore[arg-type]
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, msg=reduce)


def test_dense_buckets_use_ddps_caps():
    """The first bucket closes at 1 MiB (DDP's first bucket), the others at bucket_cap_mb."""
    seen: list[Buckets] = []

    class Spy(ZeroGrad):
        def __call__(self, at_WD, buckets=None):
            assert buckets is not None
            seen.append(buckets)
            return super().__call__(at_WD, buckets)

    x = torch.zeros(2, 5)
    for cap_mb, first in [(25.0, FIRST_BUCKET_BYTES), (0.5, 2**19)]:
        alg = sync_sgd(0.1, bucket_cap_mb=cap_mb)
        comm = SimComm(2)
        alg.step(x, Spy(), alg.init(x, comm), comm, 0)
        assert seen[-1].cap_bytes == int(cap_mb * 2**20)
        assert seen[-1].first_cap_bytes == first
    assert FIRST_BUCKET_BYTES == 2**20


def test_gathered_payloads_draw_from_the_configured_seed():
    # Gathered payloads draw their randomness per worker; the compressor's seed used to be
    # ignored there, so a data-parallel seed sweep gave the same run every time.
    from shoal.compress import qsgd

    n, d = 3, 600
    rows, comm = _rows(n, d), SimComm(n)

    def mean(seed: int) -> torch.Tensor:
        c = qsgd(1, seed=seed)
        start = compressor_states(c, rows, comm)
        assert start["reduce"] == "gather"
        return compressed_mean(c, rows, start["compressor"], comm, start["reduce"])[0][0]

    assert torch.equal(mean(7), mean(7))
    assert not torch.equal(mean(7), mean(8))
    assert not torch.equal(mean(0), mean(7))


def test_settings_of_the_other_path_are_warned_of():
    # Buckets shape the dense all-reduce, reduce the compressed payloads; each was ignored on
    # the other path without a word.
    with pytest.warns(UserWarning, match="overlap and bucket_cap_mb .* change nothing"):
        sync_sgd(0.1, compressor=top_k(ratio=0.1), overlap=False)
    with pytest.warns(UserWarning, match="overlap and bucket_cap_mb .* change nothing"):
        sync_sgd(0.1, compressor=top_k(ratio=0.1), bucket_cap_mb=1.0)
    with pytest.warns(UserWarning, match="reduce='all_gather' .* changes nothing"):
        sync_sgd(0.1, reduce="all_gather")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sync_sgd(0.1, compressor=top_k(ratio=0.1), reduce="all_gather")
        sync_sgd(0.1, overlap=False, bucket_cap_mb=1.0)


def test_local_sgd_warns_of_a_reduce_without_a_compressor_as_sync_sgd_does():
    # local_sgd all-reduces its models without a compressor: reduce='all_gather' was ignored
    # there without a word, while sync_sgd warned of it.
    with pytest.warns(UserWarning, match="local_sgd: reduce='all_gather' .* changes nothing"):
        local_sgd(0.1, 2, reduce="all_gather")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        local_sgd(0.1, 2, compressor=top_k(ratio=0.1), reduce="all_gather")
