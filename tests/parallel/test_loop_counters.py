"""The driver's counters against exact references (a clock that ticks once per reading,
shards smaller than a batch, payloads of different sizes)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from shoal.compress import threshold
from shoal.compress.wire import payload_nbytes
from shoal.parallel import SimComm, loop

from .cases import run_case, shards


def test_throughput_counts_training_time_only(monkeypatch):
    """With a clock that advances one second per reading, a training step lasts one second
    and so does an evaluation: ``samples_per_second`` is exactly the samples of one step,
    every row and the summary alike (evaluation time is not training time)."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    r = run_case("sync_sgd", SimComm(3), steps=6, eval_every=2, network=None)
    per_step = sum(min(16, len(s)) for s in shards(3))
    assert [row["samples_per_second"] for row in r.metrics] == [per_step] * 3
    assert r.summary["samples_per_second"] == per_step
    # The wall clock does include the three evaluations.
    assert r.metrics[-1]["wall_seconds"] == 6 + 3


def test_samples_count_the_rows_a_small_shard_really_trains_on():
    """A shard smaller than the batch trains on its rows only (the padding is masked out)."""
    batch = 64
    sizes = [min(batch, len(s)) for s in shards(3)]
    assert sizes != [batch] * 3  # some shard is smaller than a batch
    r = run_case("sync_sgd", SimComm(3), steps=4, eval_every=2, batch_size=batch)
    assert [row["samples"] for row in r.metrics] == [2 * sum(sizes), 4 * sum(sizes)]


def test_summary_takes_the_last_and_the_best_evaluated_accuracy():
    r = run_case("sync_sgd", SimComm(2), steps=24, eval_every=2, network=None)
    accs = [row["test_accuracy"] for row in r.metrics]
    assert len(set(accs)) > 1 and accs[0] != accs[-1] and min(accs) != max(accs)
    assert r.summary["final_test_accuracy"] == accs[-1]
    assert r.summary["final_test_loss"] == r.metrics[-1]["test_loss"]
    assert r.summary["best_test_accuracy"] == max(accs)
    assert r.summary["environment"]["device"] == "cpu"
    assert r.summary["environment"]["torch_threads"] == torch.get_num_threads()


def test_an_all_gather_counts_every_payload_at_its_own_size():
    x = torch.tensor([[3.0, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    c = threshold(1.0)
    payloads = [c.compress(row, None)[0] for row in x]
    sizes = [payload_nbytes(p) for p in payloads]
    assert len(set(sizes)) == 3
    comm = SimComm(3)
    comm.all_gather_payloads(payloads)
    assert comm.bytes_sent == sum(sizes)
    assert comm.exchanges[-1].nbytes_N == tuple(sizes)
