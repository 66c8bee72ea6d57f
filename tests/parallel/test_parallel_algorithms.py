"""Update rules against simpler references, in simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from shoal.algorithms import fedavg
from shoal.algorithms.base import LocalWork
from shoal.compress import error_feedback, identity, top_k
from shoal.parallel import (
    ParallelConfig,
    SimComm,
    dpsgd,
    eamsgd,
    easgd,
    local_sgd,
    sgp,
    sync_sgd,
    train_parallel,
)
from shoal.parallel.batches import draw_positions
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.topology import Topology, complete, from_edges, from_matrix, one_peer_exponential, ring
from shoal.train import TrainConfig, train

from .cases import ZeroGrad, config, push_sum_start, shards, tiny_data, tiny_model


def _run(alg, world, steps=6, batch_size=16, **kw):
    cfg = config(steps=steps, batch_size=batch_size, eval_every=steps, **kw)
    return train_parallel(tiny_model(), tiny_data(), shards(world), alg, cfg, SimComm(world))


def _batch(shard, step, worker, batch_size=16, seed=3):
    return shard[draw_positions(seed, step, worker, len(shard), batch_size)]


@pytest.mark.parametrize(
    "opts",
    [
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
        {"momentum": 0.0, "weight_decay": 1e-2},
    ],
)
def test_sync_sgd_with_one_worker_is_torch_sgd(opts):
    got = _run(sync_sgd(0.1, **opts), world=1, steps=8)
    data, (shard,) = tiny_data(), shards(1)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, **opts)
    for step in range(8):
        idx = torch.from_numpy(_batch(shard, step, 0))
        opt.zero_grad()
        F.cross_entropy(model(data.train.x[idx]), data.train.y[idx]).backward()
        opt.step()
    ref = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.testing.assert_close(got.params_WD[0], ref, rtol=0, atol=1e-6)


def test_dpsgd_on_complete_graph_is_fedavg_with_every_client_every_step():
    n, steps = 4, 5
    parts = shards(n)
    # Full-batch steps: shoal.train's FedAvg (one local step, every client, uniform weights).
    got = _run(dpsgd(0.3, complete(n)), world=n, steps=steps, batch_size=1000)
    cfg = TrainConfig(
        rounds=steps,
        sampler=ClientSampler(n),
        work=LocalWork(epochs=1, batch_size=None),
        weighting="uniform",
        eval_every=steps,
        client_eval=False,
        progress=False,
        device="cpu",
    )
    ref = train(tiny_model(), tiny_data(), parts, fedavg(0.3), cfg, runtime=SimRuntime(False))
    for w in range(n):
        torch.testing.assert_close(got.params_WD[w], ref.params, rtol=0, atol=1e-5)
    # Minibatches: a hand-written FedAvg round per step on the same batches.
    got = _run(dpsgd(0.3, complete(n)), world=n, steps=steps)
    data, model = tiny_data(), tiny_model()
    x = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    for step in range(steps):
        locals_ = []
        for w in range(n):
            torch.nn.utils.vector_to_parameters(x, model.parameters())
            idx = torch.from_numpy(_batch(parts[w], step, w))
            model.zero_grad()
            F.cross_entropy(model(data.train.x[idx]), data.train.y[idx]).backward()
            g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            locals_.append(x - 0.3 * g)
        x = torch.stack(locals_).mean(0)
    for w in range(n):
        torch.testing.assert_close(got.params_WD[w], x, rtol=0, atol=1e-5)


def test_local_sgd_with_h1_is_sync_sgd_and_models_agree_after_each_average():
    a = _run(local_sgd(0.2, period=1), world=3)
    b = _run(sync_sgd(0.2), world=3)
    torch.testing.assert_close(a.params_WD, b.params_WD, rtol=0, atol=1e-5)
    c = _run(local_sgd(0.2, period=3), world=3, steps=6)  # averaged after steps 3 and 6
    assert (c.params_WD - c.params_WD[0]).abs().max() < 1e-6
    d = _run(local_sgd(0.2, period=4), world=3, steps=6)  # last average after step 4
    assert (d.params_WD - d.params_WD[0]).abs().max() > 1e-4


def test_compressed_local_sgd_is_qsparse_local_sgd():
    # The identity compressor sends the exact model changes: plain local SGD.
    a = _run(local_sgd(0.2, period=3, momentum=0.5, compressor=identity()), world=3)
    b = _run(local_sgd(0.2, period=3, momentum=0.5), world=3)
    torch.testing.assert_close(a.params_WD, b.params_WD, rtol=0, atol=1e-6)
    # H = 1 without momentum: the change is -lr * grad and top-k commutes with the scaling,
    # so top-k + error feedback on model changes is top-k + error feedback on gradients.
    ef = lambda: error_feedback(top_k(ratio=0.2))  # noqa: E731
    c = _run(local_sgd(0.2, period=1, compressor=ef()), world=3)
    d = _run(sync_sgd(0.2, compressor=ef()), world=3)
    torch.testing.assert_close(c.params_WD, d.params_WD, rtol=0, atol=1e-6)
    # H = 3: after each synchronisation every replica restarts from the same model, and it
    # is not the uncompressed average.
    e = _run(local_sgd(0.2, period=3, compressor=ef()), world=3, steps=6)
    assert (e.params_WD - e.params_WD[0]).abs().max() == 0
    assert (e.params_WD - b.params_WD).abs().max() > 1e-4


def test_easgd_with_tau1_and_vanishing_alpha_is_independent_sgd():
    steps = 8
    got = _run(easgd(0.2, tau=1, alpha=1e-9), world=3, steps=steps)
    independent = _run(local_sgd(0.2, period=steps + 1), world=3, steps=steps)
    torch.testing.assert_close(got.params_WD, independent.params_WD, rtol=0, atol=1e-6)
    # With a large alpha the workers track the centre much more closely.
    tight = _run(easgd(0.2, tau=1, alpha=0.3), world=3, steps=steps)
    spread = (got.params_WD - got.state["centre_1D"]).norm(dim=1).max()
    tight_spread = (tight.params_WD - tight.state["centre_1D"]).norm(dim=1).max()
    assert tight_spread < 0.5 * spread
    # The evaluated model is the centre.
    torch.testing.assert_close(tight.params, tight.state["centre_1D"][0])


def test_eamsgd_centre_conserves_the_elastic_exchange():
    # tau = 2: on exchange steps the centre moves by exactly what the workers gave up.
    alg = eamsgd(0.1, tau=2, alpha=0.2, momentum=0.9)
    comm = SimComm(3)
    x = push_sum_start(3).float()
    state = alg.init(x, comm)
    before = x.sum(0) + state["centre_1D"][0]
    x, state = alg.step(x, ZeroGrad(), state, comm, 0)
    torch.testing.assert_close(x.sum(0) + state["centre_1D"][0], before, rtol=1e-6, atol=1e-5)


def test_overlap_sgp_with_zero_gradients_still_reaches_the_average():
    comm, n = SimComm(8), 8
    alg = sgp(1.0, overlap=True)
    x = push_sum_start(n)
    state = alg.init(x, comm)
    for t in range(60):
        x, state = alg.step(x, ZeroGrad(), state, comm, t)
    torch.testing.assert_close(
        alg.model(x, state), push_sum_start(n).mean(0).expand(n, -1), rtol=0, atol=1e-5
    )


def test_sgp_refuses_graphs_that_leave_a_node_without_push_sum_weight():
    """A directed 3-cycle: every node sends all of its mass on. Plain SGP mixes it in the same
    step and trains; with overlap the pushes arrive a step late, so a node keeps w = 0 and
    z = x / w is 0 / 0 (the run used to turn NaN and blame the learning rate)."""
    cycle = from_matrix(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    r = _run(sgp(0.1, cycle), world=3)
    assert torch.isfinite(r.params_WD).all()
    with pytest.raises(ValueError, match="node 0 keeps none of its own mass"):
        _run(sgp(0.1, cycle, overlap=True), world=3)
    sink = from_matrix(torch.tensor([[0.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="node 0 receives no mass"):
        _run(sgp(0.1, sink), world=3)


def test_gossip_refuses_a_graph_that_is_not_connected():
    """Two islands ({0, 1} and {2, 3}) never reach consensus, and the scored average model
    averaged models that never met; it ran silently (spectral gap 0)."""
    islands = from_edges(4, [(0, 1), (2, 3)])
    for make in (dpsgd, sgp):
        with pytest.raises(ValueError, match=r"not connected.*2 groups.*\{0, 1\}; \{2, 3\}"):
            make(0.1, islands)
    # Time-varying: judged over the whole cycle. Hops 2 and 4 on 8 nodes keep evens and odds
    # apart at every step; the one-peer graph, disconnected at steps 1 and 2, adds hop 1.
    peer = one_peer_exponential(8)
    apart = Topology("hops 2, 4", peer.at(1).mixing_WW, cycle=(peer.at(1), peer.at(2)))
    for make in (dpsgd, sgp):
        with pytest.raises(ValueError, match=r"'hops 2, 4' is not connected.*\{0, 2, 4, 6\}"):
            make(0.1, apart)
        make(0.1, peer)
        make(0.1, ring(1))  # a single worker is connected
    # Directed (push-sum): strongly connected. Mass flows 2 -> 1 -> 0 and never back, although
    # every node receives and keeps mass (the push-sum weight check passes).
    chain = from_matrix(torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.5]]))
    with pytest.raises(ValueError, match=r"not connected.*3 groups"):
        sgp(0.1, chain, overlap=True)


def test_dpsgd_orders_differ_but_both_train():
    a = _run(dpsgd(0.2, ring(4)), world=4)
    b = _run(dpsgd(0.2, ring(4), "lian"), world=4)
    assert (a.params_WD - b.params_WD).abs().max() > 1e-5
    for r in (a, b):
        assert r.metrics[-1]["train_loss"] < 1.2


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(
        ValueError, match=r"tau \(the communication period\) must be an integer >= 1"
    ):
        easgd(0.1, tau=0)
    with pytest.raises(
        ValueError, match=r"period \(the averaging period H\) must be an integer >= 1"
    ):
        local_sgd(0.1, period=0)
    with pytest.raises(ValueError, match="alpha must be in"):
        easgd(0.1, alpha=1.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        easgd(0.1, alpha=True)
    # A numpy float in range is a number (it was refused, "must be in (0, 1), got 0.1").
    assert easgd(0.1, tau=1, alpha=np.float32(0.1)).alpha == np.float32(0.1)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        sync_sgd(0.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        sync_sgd(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="order must be one of"):
        dpsgd(0.1, ring(4), "bogus")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="compressor must implement"):
        sync_sgd(0.1, compressor="top_k")  # type: ignore[arg-type]
    directed = from_matrix(torch.tensor([[0.5, 0.0, 1.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="not doubly stochastic.*use sgp"):
        dpsgd(0.1, directed)
    with pytest.raises(ValueError, match="5 nodes but there are 4 workers"):
        _run(dpsgd(0.1, ring(5)), world=4)
    with pytest.raises(ValueError, match="3 nodes but there are 4 workers"):
        _run(sgp(0.1, directed), world=4)
    with pytest.raises(ValueError, match="asynchronous form needs a DistComm"):
        _run(easgd(0.1, mode="async"), world=2)
    with pytest.raises(ValueError, match="got 3 shards for 4 workers"):
        train_parallel(tiny_model(), tiny_data(), shards(3), sync_sgd(0.1), config(), SimComm(4))
    with pytest.raises(ValueError, match="outside the training set"):
        bad = [np.array([0, 1]), np.array([10_000])]
        train_parallel(tiny_model(), tiny_data(), bad, sync_sgd(0.1), config(), SimComm(2))
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        ParallelConfig(steps=0)
    with pytest.raises(ValueError, match="slowdown factors must be >= 1"):
        ParallelConfig(steps=1, slowdown={0: 0.5})
    with pytest.raises(ValueError, match=r"slowdown names worker\(s\) \[5\]"):
        _run(sync_sgd(0.1), world=2, slowdown={5: 2.0})
    with pytest.raises(ValueError, match="target_accuracy"):
        ParallelConfig(steps=1, target_accuracy=1.5)
    # as TrainConfig's (seed=-1 and None failed in numpy at the first step, "3" ran)
    for seed in (-1, None, 1.5, "3"):
        with pytest.raises(ValueError, match="seed must be an integer >= 0"):
            ParallelConfig(steps=1, seed=seed)


def test_compressed_sync_sgd_reduces_in_compressed_form_only_when_that_is_exact():
    from shoal.compress import count_sketch, error_feedback, identity, powersgd, qsgd, random_k
    from shoal.functional import ParamSpec

    shapes = ParamSpec.of(tiny_model()).shapes
    ef_powersgd = error_feedback(powersgd(shapes, rank=1))
    expected = {
        "identity": (identity(), "auto", "sum"),
        "random_k": (error_feedback(random_k(0.3)), "auto", "sum"),
        "count_sketch": (count_sketch(width=40, depth=1), "auto", "sum"),
        "powersgd": (ef_powersgd, "auto", "gather"),  # one-round payloads do not add
        "powersgd, its all-reduce": (ef_powersgd, "two_round", "two_round"),
        "powersgd, 2 iterations": (powersgd(shapes, rank=1, power_iterations=2), "auto", "gather"),
        "qsgd": (qsgd(4), "auto", "gather"),
        "random_k gathered": (random_k(0.3), "all_gather", "gather"),
    }
    for name, (compressor, reduce, path) in expected.items():
        r = _run(sync_sgd(0.2, compressor=compressor, reduce=reduce), world=3)
        assert r.state["reduce"] == path, name
        assert torch.isfinite(r.params_WD).all(), name
        assert (r.params_WD - r.params_WD[0]).abs().max() == 0, name  # replicas stay equal
    with pytest.raises(ValueError, match="reduce='two_round' needs a compressor with PowerSGD"):
        sync_sgd(0.2, compressor=powersgd(shapes, power_iterations=2), reduce="two_round")
    with pytest.raises(ValueError, match="two-round all-reduce .*got no compressor"):
        sync_sgd(0.2, reduce="two_round")
    with pytest.raises(ValueError, match="reduce must be one of auto, all_gather, two_round"):
        sync_sgd(0.2, reduce="ring")
    dense = _run(sync_sgd(0.2), world=3)
    lossless = _run(sync_sgd(0.2, compressor=identity()), world=3)
    torch.testing.assert_close(lossless.params_WD, dense.params_WD, rtol=0, atol=1e-6)


def test_powersgd_all_reduce_is_the_papers_two_rounds_by_hand():
    """Vogels et al. 2019, Algorithm 1 with error feedback, on 3 workers' rows: P = sum M_i Q,
    orthogonalized; Q_i = M_i^T P; mean = P (sum Q_i)^T / 3; each worker keeps M_i - P Q_i^T;
    the summed Q is the next query; 1-D blocks are averaged exactly."""
    from shoal.compress import error_feedback, powersgd
    from shoal.compress.wire import payload_nbytes
    from shoal.functional import ParamSpec
    from shoal.parallel.algorithms.sync_sgd import compressed_mean, compressor_states

    spec = ParamSpec.of(tiny_model())
    c = error_feedback(powersgd(spec.shapes, rank=1))
    rows = torch.randn(3, spec.num_params, generator=torch.Generator().manual_seed(0))
    comm = SimComm(3)
    start = compressor_states(c, rows, comm, "two_round")
    assert start["reduce"] == "two_round"
    mean, states = compressed_mean(c, rows, start["compressor"], comm, "two_round")
    want, sent = torch.zeros(spec.num_params), 0
    for i, (shape, off) in enumerate(zip(spec.shapes, spec.offsets)):
        n = shape.numel()
        if len(shape) == 1:  # dense: averaged exactly, nothing kept
            want[off : off + n] = rows[:, off : off + n].mean(0)
            sent += 4 * n
            for s in states:
                assert (s["residual"][off : off + n] == 0).all()
            continue
        q = start["compressor"][0]["inner"][f"q{i}"]
        m = [rows[w, off : off + n].view(shape[0], -1) for w in range(3)]
        p = torch.linalg.qr(sum(m_i @ q for m_i in m)).Q
        q_w = [m_i.T @ p for m_i in m]
        want[off : off + n] = (p @ sum(q_w).T / 3).reshape(-1)
        sent += 4 * (p.numel() + q_w[0].numel())
        for w, s in enumerate(states):
            torch.testing.assert_close(
                s["residual"][off : off + n], (m[w] - p @ q_w[w].T).reshape(-1)
            )
            torch.testing.assert_close(s["inner"][f"q{i}"], sum(q_w))
    torch.testing.assert_close(mean, want.expand(3, -1))
    # Each worker sends its P (round 1), then its Q and dense entries (round 2), not P again.
    z = torch.zeros
    round1 = {"p0": z(8, 1), "p2": z(3, 1)}
    round2 = {"q0": z(6, 1), "q2": z(8, 1), "dense": z(11)}
    assert sent == 4 * (8 + 3 + 6 + 8 + 11)
    assert comm.bytes_sent == 3 * (payload_nbytes(round1) + payload_nbytes(round2))
