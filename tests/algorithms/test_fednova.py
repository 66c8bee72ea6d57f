"""FedNova: the objective-inconsistency example of Wang et al. (NeurIPS 2020).

Client i has F_i(x) = 0.5 ||x - e_i||^2 and takes tau_i local GD steps with unequal tau_i.
FedAvg with equal weights drifts to the surrogate optimum sum_i tau_i e_i / sum_i tau_i;
FedNova reaches the true optimum, the mean of the e_i.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from shoal.algorithms import LocalWork, fedavg, fednova
from shoal.attacks import sign_flip
from shoal.compress.cast import Cast
from shoal.runtime.inbox import Inbox
from shoal.runtime.sim import SimRuntime
from shoal.runtime.transmit import transmit_each
from shoal.schedule import ClientSampler, Stragglers
from shoal.train import TrainConfig, train

TAUS = (1, 2, 4)


def quadratic_rounds(alg, taus, lr: float, rounds: int) -> torch.Tensor:
    """Drive the algorithm's own functions on the quadratic clients, as the runtime does:
    per-client rows ``[W, D]``, plain GD steps plus ``alg.correction``, equal-weight mean.
    Thousands of rounds are needed to make the O(lr) bias small, too many for ``train`` in a
    unit test; the next test checks the same algorithms end to end through the driver.
    Float64 so that thousands of rounds add no rounding drift."""
    n = len(taus)
    e = torch.eye(n, dtype=torch.float64)
    steps_W1 = torch.tensor(taus, dtype=torch.float64).unsqueeze(1)
    x = torch.zeros(n, dtype=torch.float64)
    server = alg.server_init(x)
    for _ in range(rounds):
        down = alg.download(x, server)
        y = x.repeat(n, 1)
        for t in range(max(taus)):
            g = y - e  # gradient of 0.5 ||y - e_i||^2 on row i
            corr = alg.correction(y, down, {})
            stepped = y - lr * (g if corr is None else g + corr)
            y = torch.where(steps_W1 > t, stepped, y)
        msg, _ = alg.upload(y, down, {}, steps_W1)
        mean_msg = {k: v.mean(0) for k, v in msg.items()}
        x, server = alg.server_update(x, server, mean_msg, n, n, 1.0)
    return x


def test_objective_inconsistency_paper_example():
    # Small lr: both methods carry an O(lr) bias from (1 - lr)^tau != 1 - lr tau.
    lr, rounds = 0.002, 2500
    tau = torch.tensor(TAUS, dtype=torch.float64)
    avg = quadratic_rounds(fedavg(lr), TAUS, lr, rounds)
    nova = quadratic_rounds(fednova(lr), TAUS, lr, rounds)
    torch.testing.assert_close(avg, tau / tau.sum(), rtol=0, atol=1e-3)
    torch.testing.assert_close(nova, torch.full_like(tau, 1 / len(TAUS)), rtol=0, atol=1e-3)


def half_squared_distance(out_BC: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
    target = torch.eye(out_BC.shape[-1], dtype=out_BC.dtype, device=out_BC.device)[y_B]
    return 0.5 * ((out_BC - target) ** 2).sum(-1)


@pytest.mark.parametrize("vectorize", [False, True])
def test_fixed_points_through_the_driver(run, label_problem, vectorize):
    """End to end through ``train``: client i holds tau_i rows of label i, so one epoch at
    batch size 1 is tau_i steps. For a constant lr the exact fixed points are known:
    client i moves by w_i (e_i - x) with w_i = 1 - (1 - lr)^tau_i, so FedAvg stops at
    sum w_i e_i / sum w_i and FedNova at sum (w_i/tau_i) e_i / sum (w_i/tau_i)."""
    n, lr = len(TAUS), 0.2
    quadratic = label_problem(TAUS)
    tau = torch.tensor(TAUS, dtype=torch.float32)
    w = 1 - (1 - lr) ** tau
    expected = {"fedavg": w / w.sum(), "fednova": (w / tau) / (w / tau).sum()}
    for alg in (fedavg(lr), fednova(lr)):
        res = run(
            quadratic,
            alg,
            rounds=30,
            loss_fn=half_squared_distance,
            work=LocalWork(epochs=1, batch_size=1),
            weighting="uniform",
            runtime=SimRuntime(vectorize=vectorize),
        )
        torch.testing.assert_close(res.params, expected[alg.name], rtol=0, atol=1e-4)
    assert (expected["fednova"] - 1 / n).abs().max() < (expected["fedavg"] - 1 / n).abs().max()


def test_equal_local_work_is_fedavg(problem, run):
    """With tau_i = tau for all i, tau_eff * mean((y_i - x) / tau) = mean(y_i - x)."""
    cfg = dict(rounds=3, clients_per_round=4, work=LocalWork(steps=3, batch_size=4))
    avg = run(problem, fedavg(0.2), **cfg)
    nova = run(problem, fednova(0.2), **cfg)
    torch.testing.assert_close(nova.params, avg.params, rtol=0, atol=1e-6)


def test_unequal_work_differs_from_fedavg(problem, run):
    cfg = dict(
        rounds=2,
        clients_per_round=4,
        work=LocalWork(epochs=3, batch_size=4, min_epochs=1),
        stragglers=Stragglers(0.5),
    )
    avg = run(problem, fedavg(0.2), **cfg)
    nova = run(problem, fednova(0.2), **cfg)
    assert (nova.params - avg.params).abs().max() > 1e-4


@dataclasses.dataclass(frozen=True)
class _CountingBf16(Cast):
    """bf16 (257 steps go as 256), recording the length of every vector it compresses."""

    sent: list = dataclasses.field(default_factory=list, compare=False)

    def compress(self, x_D, state):
        self.sent.append(x_D.numel())
        return super().compress(x_D, state)


class _OneParameter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.zeros(1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.x.expand(inp.shape[0], 1)


class _Rows:
    linear = False

    def __call__(self, inbox_ND, weights_N):
        return inbox_ND.mean(0)


def test_tau_travels_uncompressed_and_unattacked_even_for_a_one_parameter_model():
    """FedNova names tau among its statistics: by shape alone, its [W, 1] entry is model-sized
    when the model has one parameter, and was compressed (bf16 sends 257 steps as 256, so
    tau_eff was wrong) and crafted by attacks as if it were a delta."""
    stats = fednova(0.1).statistics
    msg = {"normalized_delta": torch.tensor([[0.5], [0.25]]), "tau": torch.tensor([[257.0], [3.0]])}
    bf = _CountingBf16(torch.bfloat16)
    got, _ = transmit_each(bf, msg, [0, 1], {}, 1, statistics=stats)
    assert torch.equal(got["tau"], msg["tau"]) and bf.sent == [1, 1]  # the deltas alone
    inbox = Inbox(
        _Rows(), 1, attack=sign_flip(), byzantine=np.array([False, True]), statistics=stats
    )
    inbox.add(msg, torch.ones(2), np.arange(2))
    out = inbox.result()
    assert torch.equal(out["tau"], msg["tau"].mean(0))  # the Byzantine row's tau as it was
    assert float(out["normalized_delta"]) == 0.0  # its delta: the flipped honest one, -0.5


def test_a_one_parameter_fednova_run_compresses_only_its_deltas(label_problem):
    problem = label_problem((3, 5))
    problem.build = lambda: _OneParameter()  # labels 0 and 1 pull it apart

    def loss(out, y):
        return 0.5 * (out[:, 0] - y.to(out.dtype)) ** 2

    bf = _CountingBf16(torch.bfloat16)
    cfg = TrainConfig(rounds=2, sampler=ClientSampler(2), work=LocalWork(epochs=1, batch_size=1),
                      progress=False, device="cpu")  # fmt: skip
    train(problem.model(), problem.data, problem.clients, fednova(0.1), cfg,
          compressor=bf, loss_fn=loss)  # fmt: skip
    assert bf.sent == [1] * 4  # 2 clients x 2 rounds, one delta each; tau went raw
