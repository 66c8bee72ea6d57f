"""The driver: metrics rows, exact bytes, stopping at a target, files, and a killed run
resumed bit for bit."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest
import torch

from shoal.cost import CostModel, Network, alpha_beta
from shoal.functional import ParamSpec, cross_entropy
from shoal.parallel import SimComm, sync_sgd, train_parallel
from shoal.parallel.batches import Gradients, LocalBatches
from shoal.parallel.messages import dense_nbytes

from .cases import CASES, NETWORK, config, run_case, shards, tiny_data, tiny_model

COLUMNS = {
    "step",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "bytes_sent",
    "samples",
    "wall_seconds",
    "samples_per_second",
    "sim_seconds",  # run_case charges every step on a network (cases.NETWORK)
}


def test_rows_have_the_columns_and_exact_counts():
    r = run_case("sync_sgd", SimComm(3), steps=6, eval_every=3)
    assert [row["step"] for row in r.metrics] == [3, 6]
    d = r.spec.num_params
    per_step = 3 * dense_nbytes(torch.zeros(d))  # every worker contributes its gradient once
    sizes = [min(16, len(s)) for s in shards(3)]
    for row in r.metrics:
        assert set(row) == COLUMNS
        assert row["bytes_sent"] == row["step"] * per_step
        assert row["samples"] == row["step"] * sum(sizes)
        assert row["samples_per_second"] > 0 and row["wall_seconds"] > 0
    assert r.summary["total_bytes_sent"] == r.metrics[-1]["bytes_sent"]
    # The evaluated model is the workers' average.
    torch.testing.assert_close(r.params, r.params_WD.mean(0))


# Up 1 ms + 1 MB/s, down 2 ms + 4 MB/s, 0.1 ms per sample, no heterogeneity: every link the
# same, so the slowest is 2 ms + 1 MB/s; every step computes 16 samples (batch 16 <= shards).
BY_HAND = CostModel(
    Network("by hand", alpha_beta(1e-3, 1e6), alpha_beta(2e-3, 4e6)), seconds_per_sample=1e-4
)


@pytest.mark.parametrize(
    ("name", "slowdown"),
    [
        ("sync_sgd", 1.0),
        ("sync_sgd", 3.0),
        ("sync_sgd_topk_ef", 1.0),
        ("sync_sgd_buckets", 1.0),  # buckets of 27, 8 and 48 entries during the backward pass
        ("sync_sgd_buckets", 3.0),
        ("dpsgd_ring", 1.0),
        ("dpsgd_ring_lian", 1.0),  # sent before the gradient: transfer 2.7 ms, compute 1.6 ms
        ("dpsgd_ring_lian", 3.0),
        ("sgp", 1.0),
        ("sgp_overlap", 1.0),  # the transfer (2.3 ms) outlasts the compute (1.6 ms) ...
        ("sgp_overlap", 3.0),  # ... and here the compute (4.8 ms) outlasts the transfer
    ],
)
def test_simulated_time_by_hand(name, slowdown):
    workers, alpha, beta = 4, 2e-3, 1e6
    r = run_case(name, SimComm(workers), network=BY_HAND, slowdown={2: slowdown})
    compute = 16 * 1e-4 * slowdown  # the slowest worker's

    def ring_all_reduce(numel: int) -> float:  # of a dense message of numel entries
        n = dense_nbytes(torch.zeros(numel))
        return 2 * (workers - 1) / workers * n / beta + 2 * (workers - 1) * alpha

    for row in r.metrics:
        step = row["step"]
        if name == "sync_sgd_buckets":  # one after another, the first two from the end of the
            # forward pass (a third of the compute), the last one (the first layer) from the
            # end of the backward pass; all in one bucket would be compute + ring_all_reduce.
            link = compute / 3 + ring_all_reduce(27) + ring_all_reduce(8)
            per_bucketed = max(link, compute) + ring_all_reduce(48)
            assert row["sim_seconds"] == pytest.approx(step * per_bucketed, rel=1e-12)
            continue
        if name == "sync_sgd":  # one ring all-reduce of every worker's dense gradient: a
            # single bucket, ready when the backward pass ends
            comm = ring_all_reduce(r.spec.num_params)
        elif name == "sync_sgd_topk_ef":  # a ring all-gather of equal-sized top-k messages
            n = row["bytes_sent"] / (workers * step)
            comm = (workers - 1) * (alpha + n / beta)
        elif name.startswith("dpsgd_ring"):  # every node sends its model to its two ring neighbours
            n = row["bytes_sent"] / (workers * 2 * step)  # at once: half the uplink each (the
            comm = alpha + n / (beta / 2)  # downlink is faster)
        else:  # one peer per step: the whole uplink
            n = row["bytes_sent"] / (workers * step)
            comm = alpha + n / beta
        # Messages that travel while the workers compute: the slower of the two paces a step.
        overlapped = name in ("sgp_overlap", "dpsgd_ring_lian")
        per_step = max(compute, comm) if overlapped else compute + comm
        assert row["sim_seconds"] == pytest.approx(step * per_step, rel=1e-12)
    assert r.summary["sim_seconds"] == r.metrics[-1]["sim_seconds"]


@pytest.mark.parametrize("name", ["sync_sgd_topk_ef", "local_sgd_topk_ef", "sync_sgd_random_k"])
def test_compressed_exchanges_charge_the_codec_per_entry(name):
    """Gathered (top-k), averaged every other step (local SGD) or summed compressed (random-k):
    each exchange adds ``D`` entries' codec time to every (equally fast) worker."""
    rate = 1e-6
    plain = run_case(name, SimComm(4), network=BY_HAND)
    coded = run_case(name, SimComm(4), network=replace(BY_HAND, codec_seconds_per_element=rate))
    exchanges = {"local_sgd_topk_ef": lambda step: step // 2}.get(name, lambda step: step)
    for a, b in zip(plain.metrics, coded.metrics, strict=True):
        extra = exchanges(a["step"]) * plain.spec.num_params * rate
        assert b["sim_seconds"] - a["sim_seconds"] == pytest.approx(extra, rel=1e-9)
    # A dense run has nothing to compress.
    dense = run_case("sync_sgd", SimComm(4), network=replace(BY_HAND, codec_seconds_per_element=1))
    assert (
        dense.summary["sim_seconds"]
        == run_case("sync_sgd", SimComm(4), network=BY_HAND).summary["sim_seconds"]
    )


class _Killed(Exception):
    pass


@pytest.mark.parametrize("name", ["sgp_overlap", "sync_sgd_topk_ef", "dpsgd_ring_lian", "dgc"])
def test_a_killed_run_resumes_bit_for_bit(name, tmp_path):
    whole = run_case(name, SimComm(4), steps=7, out_dir=tmp_path / "whole")

    def kill(row):
        if row["step"] == 6:  # after the checkpoint at step 5, before the one at 7
            raise _Killed

    out = tmp_path / "killed"
    cfg = config(steps=7, checkpoint_every=5)
    with pytest.raises(_Killed):
        train_parallel(
            tiny_model(),
            tiny_data(),
            shards(4),
            CASES[name](4),
            cfg,
            SimComm(4),
            out_dir=out,
            callback=kill,
            network=NETWORK,
        )
    resumed = run_case(name, SimComm(4), steps=7, checkpoint_every=5, out_dir=out, resume=True)
    torch.testing.assert_close(resumed.params_WD, whole.params_WD, rtol=0, atol=0)
    timing = {"wall_seconds", "samples_per_second"}

    def strip(rows):
        return [{k: v for k, v in row.items() if k not in timing} for row in rows]

    assert strip(resumed.metrics) == strip(whole.metrics)
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert strip(lines) == strip(whole.metrics)
    assert {"model.pt", "summary.json", "checkpoint.pt"} <= {p.name for p in out.iterdir()}


def test_target_accuracy_stops_the_run_and_records_when(tmp_path):
    r = run_case(
        "sync_sgd", SimComm(2), steps=200, eval_every=5, target_accuracy=0.6, out_dir=tmp_path
    )
    last = r.metrics[-1]
    assert last["test_accuracy"] >= 0.6 and last["step"] < 200
    assert r.summary["steps_to_target"] == last["step"]
    assert r.summary["time_to_target_seconds"] == last["wall_seconds"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps_to_target"] == last["step"]


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("sync_sgd", r"^step 2: the test loss is nan: .*NaN/inf"),
        ("dpsgd_ring", r"^step 2: the test loss is nan: .*NaN/inf"),
        # Error feedback stops at once: its residual would carry the NaN entries top-k left.
        ("sync_sgd_topk_ef", r"^step 1: error_feedback\(top_k\(ratio=0.2\)\): the residual"),
    ],
)
def test_a_diverged_model_stops_the_run_with_one_line(name, said, tmp_path):
    """NaN features make NaN gradients; the run stops at the next evaluation (every process
    sees the same pooled test loss) instead of training NaN to its last step."""
    data = tiny_data()
    data.train.x[:, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=said):
        train_parallel(tiny_model(), data, shards(2), CASES[name](2), config(steps=10), SimComm(2))


def test_a_nan_in_an_error_feedback_residual_stops_the_run_naming_the_step():
    """A NaN gradient under error_feedback(fp16) stayed in the residual; the run now stops
    at that step, where the compressor saw it, not at the next evaluation."""
    from shoal.compress import error_feedback, fp16

    data = tiny_data()
    data.train.x[:, 0] = float("nan")
    alg = sync_sgd(0.2, compressor=error_feedback(fp16()))
    with pytest.raises(FloatingPointError, match=r"^step 1: error_feedback\(fp16\): the resid"):
        train_parallel(tiny_model(), data, shards(2), alg, config(steps=10), SimComm(2))


def test_slowdown_in_simulation_still_reports_throughput():
    r = run_case("sgp", SimComm(3), steps=4, eval_every=2, slowdown={1: 3.0})
    assert all(row["samples_per_second"] > 0 for row in r.metrics)


def test_vmapped_and_looped_gradients_agree():
    model, data, parts = tiny_model(), tiny_data(), shards(4)
    spec = ParamSpec.of(model)
    batches = LocalBatches(data.train.x, data.train.y, parts, range(4), 16, 0, torch.device("cpu"))
    params = spec.flatten(model).expand(4, -1) + 0.01 * torch.randn(4, spec.num_params)
    index, mask = batches.index(0)
    g_vmap = Gradients(model, spec, cross_entropy, batches, index, mask, True)
    g_loop = Gradients(model, spec, cross_entropy, batches, index, mask, False)
    torch.testing.assert_close(g_vmap(params), g_loop(params), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_vmap.loss_W, g_loop.loss_W, rtol=1e-5, atol=1e-6)


def test_a_sync_sgd_run_learns(tmp_path):
    r = run_case("sync_sgd", SimComm(4), steps=60, eval_every=20)
    assert r.metrics[-1]["test_accuracy"] > 0.7
    assert r.metrics[-1]["train_loss"] < r.metrics[0]["train_loss"]
    assert sync_sgd(0.1).name == "sync_sgd"


class _CountingComm(SimComm):
    """A SimComm that counts the evaluation's averaging collectives."""

    averages = 0

    def average(self, x_WD: torch.Tensor, keep_W: torch.Tensor | None = None) -> torch.Tensor:
        self.averages += 1
        return super().average(x_WD, keep_W)


@pytest.mark.parametrize(
    ("name", "shared"),
    [("sync_sgd", True), ("sync_sgd_topk_ef", True), ("local_sgd", False), ("dpsgd_ring", False)],
)
def test_a_model_all_workers_hold_is_scored_without_a_collective(name, shared):
    comm = _CountingComm(3)
    r = run_case(name, comm)
    rows = len(r.metrics) + 1  # every metrics row, and the final model
    if shared:  # synchronous SGD's replicas are exactly equal: scoring one needs no average
        assert comm.averages == 0
        assert torch.equal(r.params_WD, r.params_WD[:1].expand_as(r.params_WD))
        assert torch.equal(r.params, r.params_WD[0])
    else:
        assert comm.averages == rows
        torch.testing.assert_close(r.params, r.params_WD.mean(0), rtol=0, atol=0)


def test_a_slowdown_that_the_simulated_time_cannot_show_is_warned_of():
    # A slower worker multiplies compute time: with seconds_per_sample 0 there is none, and
    # sim_seconds ignored the slowdown without a word.
    no_compute = replace(BY_HAND, seconds_per_sample=0.0)
    with pytest.warns(UserWarning, match="seconds_per_sample is 0"):
        run_case("sync_sgd", SimComm(2), steps=2, network=no_compute, slowdown={1: 3.0})


def test_codec_time_that_no_exchange_is_charged_is_warned_of():
    # Codec time is charged per compressed exchange: gossip sends none, and the setting was
    # ignored without a word. A compressed all-gather is charged it.
    with_codec = replace(BY_HAND, codec_seconds_per_element=1e-9)
    with pytest.warns(UserWarning, match="dpsgd sent none"):
        run_case("dpsgd_ring", SimComm(2), steps=2, network=with_codec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_case("sync_sgd_topk_ef", SimComm(2), steps=2, network=with_codec)


class _WithUnused(torch.nn.Module):
    """``tiny_model`` plus a layer its forward never calls (e.g. a head kept for later)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_model()
        self.spare = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("workers", [1, 3])
def test_an_unused_parameter_keeps_its_value_and_the_rest_trains_as_without_it(overlap, workers):
    # autograd.grad failed in step 1 ("appears to not have been used in the graph"); with
    # buckets the spare layer's bucket must still be handed over, or its all-reduce never runs.
    # Tiny buckets (32 bytes) put the spare layer in buckets of its own.
    if overlap:
        alg = sync_sgd(0.2, momentum=0.9, bucket_cap_mb=32 / 2**20)
    else:
        alg = sync_sgd(0.2, momentum=0.9, overlap=False)

    def run(model: torch.nn.Module):  # type: ignore[no-untyped-def]
        return train_parallel(
            model, tiny_data(), shards(workers), alg, config(steps=4), SimComm(workers)
        )

    plain, spare = run(tiny_model()), run(_WithUnused())
    model = _WithUnused()
    n = ParamSpec.of(model.body).num_params
    torch.testing.assert_close(spare.params[:n], plain.params, rtol=0, atol=0)
    torch.testing.assert_close(spare.params[n:], ParamSpec.of(model).flatten(model)[n:])


def test_a_model_with_a_torch_lstm_is_looped_not_vmapped():
    # vmap has no batching rule for aten::lstm: two workers in one process failed in step 1.
    class Recurrent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.lstm = torch.nn.LSTM(1, 4, batch_first=True)
            self.out = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.lstm(x.unsqueeze(-1))
            return self.out(h[:, -1])

    r = train_parallel(Recurrent(), tiny_data(), shards(2), sync_sgd(0.2), config(), SimComm(2))
    assert r.metrics[-1]["step"] == 5 and torch.isfinite(r.params).all()


def test_a_saving_run_leaves_the_model_as_it_was_and_saves_the_trained_one(tmp_path):
    # With out_dir, the evaluated parameters were loaded into the caller's model (to save it).
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = train_parallel(
        model, tiny_data(), shards(2), CASES["sync_sgd"](2), config(steps=3), SimComm(2),
        out_dir=tmp_path,
    )  # fmt: skip
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    trained = r.spec.unflatten(r.params)
    assert saved.keys() == before.keys() == trained.keys()
    for k in trained:
        assert torch.equal(saved[k], trained[k]) and not torch.equal(saved[k], before[k]), k


def test_a_float64_model_trains_in_float64():
    """train_parallel cast the parameters to float32, so a float64 model failed inside the
    first step with a dtype mismatch."""
    data = tiny_data()
    data64 = type(data)(
        data.name,
        type(data.train)(data.train.x.double(), data.train.y, data.train.num_classes),
        type(data.test)(data.test.x.double(), data.test.y, data.test.num_classes),
    )
    r = train_parallel(
        tiny_model().double(), data64, shards(2), sync_sgd(0.2), config(), SimComm(2)
    )
    assert r.params.dtype == torch.float64 and torch.isfinite(r.params).all()


def test_a_resume_with_a_model_of_another_dtype_is_refused(tmp_path):
    # The checkpoint's float32 parameters met a float64 model inside the first step.
    data = tiny_data()
    data64 = type(data)(
        data.name,
        type(data.train)(data.train.x.double(), data.train.y, data.train.num_classes),
        type(data.test)(data.test.x.double(), data.test.y, data.test.num_classes),
    )
    first, comm = config(steps=3, checkpoint_every=3), SimComm(2)
    train_parallel(tiny_model(), data, shards(2), sync_sgd(0.2), first, comm, out_dir=tmp_path)
    with pytest.raises(ValueError, match="holds float32 parameters, but this model trains in"):
        train_parallel(tiny_model().double(), data64, shards(2), sync_sgd(0.2), config(steps=5),
                       SimComm(2), out_dir=tmp_path, resume=True)  # fmt: skip


def test_a_model_that_views_its_kernels_trains_data_parallel():
    """Weight Standardization's w.view(out, -1) failed on the channels-last kernels the CPU
    path hands a looped model ("view size is not compatible"), in the first step."""
    import numpy as np
    from torch import nn

    from core.helpers import WSConv2d
    from shoal.data.types import ArrayDataset, FederatedDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 3, 6, 6, generator=g), torch.randint(0, 3, (48,), generator=g)
    data = FederatedDataset("t", ArrayDataset(x[:40], y[:40], 3), ArrayDataset(x[40:], y[40:], 3))
    torch.manual_seed(0)
    model = nn.Sequential(WSConv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    shards_ = [np.arange(0, 20), np.arange(20, 40)]
    result = train_parallel(model, data, shards_, sync_sgd(0.1), config(steps=2), SimComm(2))
    assert all(np.isfinite(r["test_loss"]) for r in result.metrics if "test_loss" in r)
