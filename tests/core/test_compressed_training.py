"""Compressed uplinks inside training: exact bytes, runtime agreement, error feedback."""

import warnings

import pytest
import torch

from shoal.algorithms import fedavg, scaffold
from shoal.algorithms.base import LocalWork
from shoal.compress import (
    error_feedback,
    layerwise,
    qsgd,
    serialize,
    top_k,
    without_feedback,
)
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model, unequal_clients


def _run(alg, compressor, vectorize=True, rounds=12, out_dir=None):
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    cfg = TrainConfig(
        rounds=rounds,
        sampler=ClientSampler(4),
        work=LocalWork(epochs=2, batch_size=8),
        progress=False,
    )
    return train(
        tiny_model(),
        data,
        clients,
        alg,
        cfg,
        compressor=compressor,
        out_dir=out_dir,
        runtime=SimRuntime(vectorize=vectorize),
    )


def test_uplink_bytes_are_the_serialized_payloads():
    c = top_k(ratio=0.1)
    res = _run(fedavg(0.2), c, rounds=1)
    d = res.spec.num_params
    one = len(serialize(c.compress(torch.randn(d), c.init(torch.randn(d)))[0]))
    assert res.metrics[0]["uplink_bytes"] == 4 * one
    assert res.metrics[0]["uplink_bytes"] < res.metrics[0]["downlink_bytes"] / 5


def test_error_feedback_top_k_learns_and_runtimes_agree():
    c = error_feedback(top_k(ratio=0.1))
    vec = _run(fedavg(0.2), c)
    loop = _run(fedavg(0.2), c, vectorize=False)
    torch.testing.assert_close(vec.params, loop.params, atol=1e-5, rtol=0)
    dense = _run(fedavg(0.2), None)
    assert vec.metrics[-1]["test_accuracy"] > 0.7
    assert vec.metrics[-1]["cum_uplink_bytes"] < dense.metrics[-1]["cum_uplink_bytes"] / 3


def test_compressed_scaffold_compresses_both_uploads():
    plain = _run(scaffold(0.2), None, rounds=1)
    packed = _run(scaffold(0.2), top_k(ratio=0.1), rounds=1)
    assert packed.metrics[0]["uplink_bytes"] < plain.metrics[0]["uplink_bytes"] / 3


def _scaffold_c(tmp_path, compressor, weighting):
    """SCAFFOLD on 10 unequal clients, 4 sampled a round: the server's c, and the mean of the
    clients' c_k (never-sampled clients at zero) under the run's aggregation weights."""
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    cfg = TrainConfig(rounds=8, sampler=ClientSampler(4), work=LocalWork(epochs=2, batch_size=8),
                      weighting=weighting, device="cpu", progress=False)  # fmt: skip
    train(tiny_model(), data, clients, scaffold(0.2), cfg, compressor=compressor,
          out_dir=tmp_path)  # fmt: skip
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    c_server = ck["server"]["c"]
    zero = torch.zeros_like(c_server)
    c_K = torch.stack([ck["clients"].get(k, {"c": zero})["c"] for k in range(10)])
    w_K = torch.tensor([float(len(c)) if weighting == "samples" else 1.0 for c in clients])
    return c_server, (w_K[:, None] * c_K).sum(0) / w_K.sum(), ck


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_scaffolds_c_is_the_weighted_mean_of_the_c_k_under_partial_participation(
    weighting, tmp_path
):
    """The server adds the sampled clients' share of the population's weight times their
    weighted mean change; with |S| / N under n_k weights c was 45% off either mean."""
    c_server, c_mean, _ = _scaffold_c(tmp_path, None, weighting)
    assert float(c_server.norm()) > 0.01
    torch.testing.assert_close(c_mean, c_server, atol=1e-6, rtol=0)


@pytest.mark.parametrize("feedback", [False, True], ids=["plain", "error_feedback"])
def test_lossy_scaffold_keeps_c_the_mean_of_the_clients_c_k(feedback, tmp_path):
    """SCAFFOLD's invariant c = mean_k c_k must survive a lossy uplink: each client's c_k is
    what the server decoded of its delta_c (EF21-style), not the exact c_k+ it computed, or
    the corrections c - c_k stop summing to zero."""
    c = top_k(ratio=0.1)
    c_server, c_mean, ck = _scaffold_c(tmp_path, error_feedback(c) if feedback else c, "uniform")
    assert float(c_server.norm()) > 0.01
    torch.testing.assert_close(c_mean, c_server, atol=1e-6, rtol=0)

    # delta_c carries its own memory: error feedback (a residual) only on the model delta.
    def has_residual(state):
        return isinstance(state, dict) and "residual" in state

    for state in ck["compressor"].values():
        assert has_residual(state["delta"]) == feedback and not has_residual(state["delta_c"])


def test_sampling_choices_that_would_count_clients_twice():
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    twice = TrainConfig(rounds=1, sampler=ClientSampler(4, replace=True), progress=False)
    with pytest.raises(ValueError, match="sample without replacement"):
        train(tiny_model(), data, clients, scaffold(0.2), twice)
    by_size = TrainConfig(rounds=1, sampler=ClientSampler(4, weighted=True), progress=False)
    with pytest.warns(UserWarning, match="weighted with replacement and averages uniformly"):
        train(tiny_model(), data, clients, fedavg(0.2), by_size)


def test_without_feedback_strips_error_feedback_at_any_depth():
    shapes = [torch.Size([3, 4]), torch.Size([4])]
    assert without_feedback(error_feedback(top_k(0.1))) == top_k(0.1)
    inner = layerwise(error_feedback(top_k(0.1)), shapes)
    assert without_feedback(error_feedback(inner)) == layerwise(top_k(0.1), shapes)
    assert without_feedback(top_k(0.1)) == top_k(0.1)


def test_resume_keeps_error_feedback_residuals(tmp_path):
    c = error_feedback(top_k(ratio=0.1))
    ref = _run(fedavg(0.2), c, rounds=6, out_dir=tmp_path / "a")
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert ck["compressor"], "error-feedback residuals must be checkpointed"
    _run(fedavg(0.2), c, rounds=3, out_dir=tmp_path / "b")
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    cfg = TrainConfig(
        rounds=6,
        sampler=ClientSampler(4),
        work=LocalWork(epochs=2, batch_size=8),
        progress=False,
    )
    res = train(
        tiny_model(),
        data,
        clients,
        fedavg(0.2),
        cfg,
        compressor=c,
        out_dir=tmp_path / "b",
        resume=True,
    )
    assert torch.equal(ref.params, res.params)


def test_each_client_gets_back_its_own_compressor_state():
    """Error feedback only works if a client's next upload starts from the state its last one
    left: follow a counting state through a partially sampled run, in both runtimes."""
    from shoal.compress import payload_nbytes
    from shoal.compress._common import mix

    log: list[tuple[int, int]] = []

    class Tagged:  # identity payload; the state is (owner's seed, uses so far)
        name = "tagged"
        seed = 0

        def init(self, x_D, seed=None):
            return {"owner": seed, "uses": 0}

        def compress(self, x_D, state):
            log.append((state["owner"], state["uses"]))
            return {"values": x_D}, {**state, "uses": state["uses"] + 1}

        def decompress(self, payload):
            return payload["values"]

        def nbytes(self, payload):
            return payload_nbytes(payload)

    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    sampler = ClientSampler(4)
    sizes = [len(c) for c in clients]
    expected, uses = [], dict.fromkeys(range(10), 0)
    for r in range(6):
        for k in sampler(sizes, 0, r):
            expected.append((mix(0, int(k), 0), uses[int(k)]))
            uses[int(k)] += 1
    assert max(uses.values()) >= 3  # some clients come back more than once
    for vectorize in (True, False):
        log.clear()
        cfg = TrainConfig(rounds=6, sampler=sampler, work=LocalWork(epochs=1, batch_size=8),
                          seed=0, progress=False)  # fmt: skip
        train(tiny_model(), data, clients, fedavg(0.2), cfg, compressor=Tagged(),
              runtime=SimRuntime(vectorize=vectorize))  # fmt: skip
        assert sorted(log) == sorted(expected)


def test_scaffold_warns_of_a_compressor_that_is_not_contractive():
    # delta_c goes EF21-style (each client keeps what the server decoded); with QSGD at 4
    # levels in buckets of 512 (not contractive) SCAFFOLD fell to chance where FedAvg learned.
    with pytest.warns(UserWarning, match="scaffold sends delta_c through qsgd"):
        _run(scaffold(0.2), qsgd(levels=4), rounds=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(scaffold(0.2), error_feedback(top_k(ratio=0.1)), rounds=1)
        _run(fedavg(0.2), qsgd(levels=4), rounds=1)  # nothing tracked: unbiased is enough
