"""SCAFFOLD (option II) against centralized SGD and its control-variate invariant."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from shoal.aggregate import mean, trimmed_mean
from shoal.algorithms import LocalWork, fedavg, scaffold
from shoal.functional import ParamSpec
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_one_full_batch_step_full_participation_is_centralized_sgd(problem, run, server_lr):
    """With K = 1, c_k+ = grad F_k(x), and c = mean(c_k), so the corrections cancel in the
    mean and x <- x - server_lr * lr * sum_k p_k grad F_k(x): SGD on the pooled loss."""
    lr, rounds = 0.4, 4
    model = problem.model()
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=lr * server_lr)
    x, y = problem.rows()
    for _ in range(rounds):
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    res = run(
        problem,
        scaffold(lr, server_lr=server_lr),
        rounds=rounds,
        model=model,
        work=LocalWork(steps=1, batch_size=None),
    )
    torch.testing.assert_close(res.params, ParamSpec.of(ref).flatten(ref), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("weighting", "clients_per_round"),
    [("samples", None), ("uniform", None), ("uniform", 3)],
)
def test_server_c_is_the_mean_of_client_c(problem, run, tmp_path, weighting, clients_per_round):
    """c <- c + (|S|/N) mean_S(dc) keeps c = mean(c_k) under full participation (for the
    aggregation weights used); with uniform weights it holds even under partial participation,
    because then (|S|/N) mean_S(dc) = (1/N) sum_S dc and never-sampled clients have c_k = 0."""
    run(
        problem,
        scaffold(0.1),
        rounds=3,
        clients_per_round=clients_per_round,
        work=LocalWork(epochs=2, batch_size=3),
        weighting=weighting,
        out_dir=tmp_path,
    )
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    n = len(problem.clients)
    zero = torch.zeros_like(ck["server"]["c"])  # never-sampled clients still have c_k = 0
    c_k = torch.stack([ck["clients"].get(k, {"c": zero})["c"] for k in range(n)])
    if weighting == "samples":
        w = torch.tensor([len(c) for c in problem.clients], dtype=torch.float32)
    else:
        w = torch.ones(n)
    expected = (w @ c_k) / w.sum()
    assert expected.abs().max() > 1e-3  # the test is not vacuous
    torch.testing.assert_close(ck["server"]["c"], expected, rtol=0, atol=1e-5)


def test_control_variates_double_the_traffic(problem, run):
    cfg = dict(rounds=2, clients_per_round=3, work=LocalWork(epochs=1, batch_size=4))
    base = run(problem, fedavg(0.1), **cfg).metrics
    scaf = run(problem, scaffold(0.1), **cfg).metrics
    for b, s in zip(base, scaf):
        assert s["downlink_bytes"] == 2 * b["downlink_bytes"]
        assert s["uplink_bytes"] == 2 * b["uplink_bytes"]


def test_option_two_recovers_the_mean_local_gradient(run, label_problem, tmp_path):
    """Option II sets c_k+ = c_k - c + (x - y)/(K lr) = the mean of the K local gradients
    (y moved by -lr * sum_t (g_t - c_k + c)). With linear clients F_k(x) = <a_k, x> the
    gradient is a_k everywhere, so c_k must equal a_k after every round, for any K_k and any
    correction history; K_k differs per client (sizes, batch 1), and from round 2 on the
    corrections c - c_k are non-zero."""
    sizes = (1, 2, 3, 5)
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, -1.0, 0.0, 0.0],
                      [0.0, 2.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 3.0]])  # fmt: skip

    def linear(out_BC: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
        return (out_BC * a[y_B]).sum(-1)

    problem = label_problem(sizes)
    run(
        problem,
        scaffold(0.05),
        rounds=3,
        loss_fn=linear,
        work=LocalWork(epochs=1, batch_size=1),
        out_dir=tmp_path,
    )
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    c_k = torch.stack([ck["clients"][k]["c"] for k in range(len(sizes))])
    torch.testing.assert_close(c_k, a, rtol=0, atol=1e-5)
    w = torch.tensor(sizes, dtype=torch.float32)
    torch.testing.assert_close(ck["server"]["c"], (w @ a) / w.sum(), rtol=0, atol=1e-5)


def test_warns_of_an_aggregator_that_is_not_a_mean(problem, tmp_path):
    """The server adds the aggregate of delta_c to c, each client its own delta_c to c_k: with
    trimmed_mean(1) c drifted from the mean of the c_k by twice its own size in 10 rounds, so
    the corrections c - c_k stopped cancelling. train warns; the mean and FedAvg stay quiet."""
    cfg = TrainConfig(
        rounds=4,
        sampler=ClientSampler(len(problem.clients)),
        work=LocalWork(epochs=2, batch_size=3),
        weighting="uniform",
        progress=False,
        device="cpu",
    )

    def fit(alg, agg, out=None):
        return train(problem.model(), problem.data, problem.clients, alg, cfg, aggregator=agg,
                     runtime=SimRuntime(vectorize=False), out_dir=out)  # fmt: skip

    with pytest.warns(UserWarning, match="scaffold aggregates delta_c with TrimmedMean"):
        fit(scaffold(0.1), trimmed_mean(1), tmp_path)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    c_k = torch.stack([ck["clients"][k]["c"] for k in range(len(problem.clients))])
    assert (ck["server"]["c"] - c_k.mean(0)).abs().max() > 1e-3  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(scaffold(0.1), mean())
        fit(fedavg(0.1), trimmed_mean(1))
