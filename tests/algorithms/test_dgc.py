"""Deep Gradient Compression against a hand-written per-step reference, plain PyTorch momentum
SGD at density 1, its warm-up schedules, clipping, exact bytes and convergence."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shoal.algorithms import DGC, dgc
from shoal.algorithms.dgc import Nonzeros, warmup_density
from shoal.compress import payload_nbytes, serialize
from shoal.functional import ParamSpec
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler, Stragglers
from shoal.train import TrainConfig, train

FEATURES, CLASSES = 4, 3  # the conftest problem's


def run_dgc(problem: Any, alg: DGC, rounds: int, model: nn.Module, **kwargs):
    cfg = TrainConfig(
        rounds=rounds,
        sampler=ClientSampler(len(problem.clients)),
        work=alg.work_override,
        weighting="uniform",
        progress=False,
        device="cpu",
        eval_every=rounds,
        client_eval=False,
    )
    runtime = kwargs.pop("runtime", SimRuntime(vectorize=False))
    return train(
        model,
        problem.data,
        problem.clients,
        alg,
        cfg,
        runtime=runtime,
        compressor=kwargs.pop("compressor", alg.default_compressor),
        **kwargs,
    )


def flat(model: nn.Module) -> torch.Tensor:
    return ParamSpec.of(model).flatten(model)


def reference_dgc(model, problem, lr, momentum, densities):
    """DGC written out per step with autograd and exact top-k (what the paper describes)."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    n = len(problem.clients)
    u = [{k: torch.zeros_like(p) for k, p in params.items()} for _ in range(n)]
    v = [{k: torch.zeros_like(p) for k, p in params.items()} for _ in range(n)]
    for density in densities:
        sent = {k: torch.zeros_like(p) for k, p in params.items()}
        for w in range(n):
            x, y = problem.rows([w])
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            for k, p in params.items():
                u[w][k] = momentum * u[w][k] + p.grad
                if p.dim() <= 1:  # biases: dense, the momentum itself
                    sent[k] += u[w][k] / n
                    continue
                v[w][k] = v[w][k] + u[w][k]
                flat_v = v[w][k].view(-1)
                idx = torch.topk(flat_v.abs(), math.ceil(density * flat_v.numel())).indices
                sent[k].view(-1)[idx] += flat_v[idx] / n
                flat_v[idx] = 0
                u[w][k].view(-1)[idx] = 0
        with torch.no_grad():
            for k, p in params.items():
                p -= lr * sent[k]
    return flat(model)


def test_momentum_correction_and_masking_match_a_per_step_reference(problem_factory):
    problem = problem_factory(sizes=(6, 6, 6))
    model = problem.model()
    # Full local batches (deterministic gradients), exact top-k, and a warm-up of two 2-round
    # epochs: density 1/4, 1/4, then the target 0.1 (1/16 is below it).
    alg = full_batch(problem, 0.5, density=0.1, sample_ratio=1.0, warmup_epochs=2, epoch_steps=2)
    res = run_dgc(problem, alg, 6, model)
    expected = reference_dgc(model, problem, 0.5, 0.9, [0.25, 0.25, 0.1, 0.1, 0.1, 0.1])
    torch.testing.assert_close(res.params, expected, rtol=0, atol=1e-5)


def full_batch(problem: Any, lr: float, **kw) -> DGC:
    spec = ParamSpec.of(problem.model())
    return DGC(lr, spec.shapes, **{"batch_size": None, **kw})


@pytest.mark.parametrize("masking", [False, True])
def test_density_one_is_synchronous_momentum_sgd(masking, problem_factory):
    """Without masking: torch.optim.SGD(momentum) on the averaged gradient. With it, every
    weight entry is sent and its momentum zeroed each step, so the weights take plain SGD steps
    (as in the reference code) while the dense biases keep their momentum."""
    problem = problem_factory(sizes=(8, 8, 8, 8))
    model = problem.model()
    alg = full_batch(problem, 0.2, density=1.0, momentum=0.9, momentum_masking=masking)
    res = run_dgc(problem, alg, 10, model)
    ref = copy.deepcopy(model)
    weights = [p for p in ref.parameters() if p.dim() > 1]
    biases = [p for p in ref.parameters() if p.dim() <= 1]
    groups = [{"params": weights, "momentum": 0.0 if masking else 0.9}, {"params": biases}]
    opt = torch.optim.SGD(groups, lr=0.2, momentum=0.9)
    x, y = problem.rows()  # equal shards: the pooled mean loss is the mean of the workers'
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    torch.testing.assert_close(res.params, flat(ref), rtol=0, atol=1e-5)


def test_warmup_schedules():
    paper = [warmup_density(s, 0.001, epoch_steps=3) for s in range(0, 15, 3)]
    assert paper == pytest.approx([0.25, 0.0625, 0.015625, 0.00390625, 0.001])
    # every round of an epoch has its epoch's density; after the warm-up, the target
    assert warmup_density(2, 0.001, 3) == 0.25 and warmup_density(100, 0.001, 3) == 0.001
    code = [warmup_density(e, 0.001, 1, warmup_epochs=5, schedule="code") for e in range(6)]
    assert code == pytest.approx([0.316228, 0.1, 0.0316228, 0.01, 0.00316228, 0.001], rel=1e-5)
    assert warmup_density(0, 0.001, epoch_steps=0) == 0.001  # no warm-up
    assert warmup_density(0, 0.1, 5) == 0.25 and warmup_density(5, 0.1, 5) == 0.1  # clamped


def test_local_clipping_scales_the_threshold_by_one_over_sqrt_n():
    shapes = [(2, 3), (3,)]
    alg = DGC(0.5, shapes, density=1.0, momentum_masking=False, clip_norm=2.0, num_workers=4)
    x = torch.randn(9)
    g = torch.randn(2, 9)
    g[0] *= 10 / g[0].norm()  # above the local threshold 2 / sqrt(4) = 1
    g[1] *= 0.5 / g[1].norm()  # below it: untouched
    client = {k: torch.stack([v, v]) for k, v in alg.client_init(x).items()}
    msg, _ = alg.upload(x - 0.5 * g, {"params": x}, client, torch.ones(2, 1))
    sent = msg["update"]
    torch.testing.assert_close(sent[0], g[0] / 10, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sent[1], g[1], rtol=1e-5, atol=1e-6)


def expected_bytes(spec: ParamSpec, density: float) -> int:
    """The wire format by hand: (values, uint8 indices, size) per weight, the biases dense."""
    total, dense = 2, 0
    for i, shape in enumerate(spec.shapes):
        d = math.prod(shape)
        if len(shape) <= 1:
            dense += d
            continue
        k = math.ceil(density * d)
        total += 3 + len(f"{i}.values") + 4 + 4 * k
        total += 3 + len(f"{i}.indices") + 4 + 1 * k
        total += 3 + len(f"{i}.size") + 1
    return total + 3 + len("dense") + 4 + 4 * dense


def test_uplink_bytes_are_the_pairs_sent(problem_factory):
    problem = problem_factory(sizes=(6, 6, 6))
    model = problem.model()
    spec = ParamSpec.of(model)
    alg = full_batch(problem, 0.3, density=0.25, sample_ratio=1.0)
    res = run_dgc(problem, alg, 3, model)
    per_worker = expected_bytes(spec, 0.25)
    assert [r["uplink_bytes"] for r in res.metrics] == [3 * per_worker] * 3
    # one message: serialized length == nbytes, lossless, k nonzeros per weight tensor
    x = flat(model)
    client = {k: v.unsqueeze(0) for k, v in alg.client_init(x).items()}
    msg, _ = alg.upload(
        x - 0.3 * torch.randn(1, x.numel()), {"params": x}, client, torch.ones(1, 1)
    )
    wire = alg.default_compressor
    payload, _ = wire.compress(msg["update"][0], wire.init(x))
    assert wire.nbytes(payload) == len(serialize(payload)) == per_worker
    assert torch.equal(wire.decompress(payload), msg["update"][0])
    for name, part in spec.unflatten(msg["update"][0]).items():
        if part.dim() > 1:
            assert int((part != 0).sum()) == math.ceil(0.25 * part.numel()), name


def test_nonzeros_goes_dense_when_that_is_smaller():
    x = torch.randn(100)
    payload, _ = Nonzeros().compress(x, None)
    assert set(payload) == {"values"} and torch.equal(Nonzeros().decompress(payload), x)
    x[10:] = 0
    payload, _ = Nonzeros().compress(x, None)
    assert "indices" in payload and payload_nbytes(payload) < payload_nbytes({"values": x})
    assert torch.equal(Nonzeros().decompress(payload), x)


def test_looped_and_vectorized_runtimes_agree(problem_factory):
    """Sampled thresholds, warm-up, clipping and masking on stacked workers."""
    problem = problem_factory(sizes=(12, 12, 12, 12))
    model = nn.Sequential(nn.Linear(FEATURES, 64), nn.Tanh(), nn.Linear(64, CLASSES))
    spec = ParamSpec.of(model)
    alg = DGC(
        0.2, spec.shapes, density=0.05, batch_size=4, clip_norm=1.0, num_workers=4, epoch_steps=2
    )
    loop = run_dgc(problem, alg, 6, model, runtime=SimRuntime(vectorize=False))
    vec = run_dgc(problem, alg, 6, model, runtime=SimRuntime(vectorize=True))
    torch.testing.assert_close(vec.params, loop.params, rtol=0, atol=1e-6)
    assert [r["uplink_bytes"] for r in vec.metrics] == [r["uplink_bytes"] for r in loop.metrics]


def accuracy(model: nn.Module, params: torch.Tensor, problem: Any) -> float:
    ParamSpec.of(model).load_into(model, params)
    x, y = problem.rows()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_dgc_converges_at_two_percent_density(problem_factory):
    problem = problem_factory(sizes=(50, 50, 50, 50), seed=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, CLASSES))
    spec = ParamSpec.of(model)
    alg = DGC(0.1, spec.shapes, density=0.02, batch_size=10, epoch_steps=5)
    before = accuracy(copy.deepcopy(model), flat(model), problem)
    res = run_dgc(problem, alg, 300, copy.deepcopy(model))
    assert accuracy(model, res.params, problem) >= 0.9 > before
    dense = payload_nbytes({"values": flat(model)})  # per worker, uncompressed
    warm, last = res.metrics[0]["uplink_bytes"], res.metrics[-1]["uplink_bytes"]
    assert last < warm and last < 0.3 * 4 * dense  # mostly the 35 dense biases and framing


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"density": 0.0}, "density must be in"),
        ({"density": 1.5}, "density must be in"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"clip_norm": 1.0}, "clip_norm needs num_workers"),
        ({"sample_ratio": 0.0}, "sample_ratio must be in"),
        ({"epoch_steps": -1}, "epoch_steps must be an integer >= 0, got -1$"),
        ({"epoch_steps": 2.5}, "epoch_steps must be an integer >= 0, got 2.5$"),
        ({"warmup_epochs": -1}, "warmup_epochs must be an integer >= 0, got -1$"),
        ({"warmup": "linear"}, "warmup must be"),
        ({"momentum_masking": "false"}, "momentum_masking must be true or false"),
        ({"lr": -1.0}, "lr must be a positive number"),
    ],
)
def test_bad_arguments_are_one_line_value_errors(kwargs, match):
    args = {"lr": 0.1, "shapes": [(2, 3), (3,)], **kwargs}
    with pytest.raises(ValueError, match=match) as err:
        dgc(**args)
    assert "\n" not in str(err.value)


def test_needs_shapes_and_every_worker_every_round(problem_factory):
    with pytest.raises(ValueError, match="shapes is required"):
        dgc(0.1)
    problem = problem_factory(sizes=(6, 6, 6))
    with pytest.raises(ValueError, match="describe 9 parameters but the model has"):
        DGC(0.1, [(2, 3), (3,)]).client_init(torch.zeros(51))
    model = problem.model()
    alg = full_batch(problem, 0.1)
    cfg = TrainConfig(rounds=1, sampler=ClientSampler(2), work=alg.work_override, progress=False)
    with pytest.raises(ValueError, match="every worker must train every round, but 2 of 3"):
        train(model, problem.data, problem.clients, alg, cfg, compressor=alg.default_compressor)
    # Refused before round 1's training (it was, in the server's update after it), like
    # dropped stragglers and a num_workers for another number of workers.
    rounds: list[dict] = []
    everyone = ClientSampler(3)
    for work_cfg, algorithm, match in [
        (Stragglers(0.4, drop=True), alg, "3 of 3 are sampled and stragglers dropped"),
        (Stragglers(), full_batch(problem, 0.1, num_workers=4), "num_workers=4 but the run has 3"),
    ]:
        cfg = TrainConfig(rounds=1, sampler=everyone, stragglers=work_cfg, progress=False)
        with pytest.raises(ValueError, match=match):
            train(model, problem.data, problem.clients, algorithm, cfg,
                  compressor=alg.default_compressor, callback=rounds.append)  # fmt: skip
    assert not rounds
    # Three draws with replacement pass the count, with a worker twice and one left out.
    cfg = TrainConfig(rounds=1, sampler=ClientSampler(3, replace=True), progress=False)
    with pytest.raises(ValueError, match="sample without replacement"):
        train(model, problem.data, problem.clients, alg, cfg, compressor=alg.default_compressor)


def test_registered_for_the_cli_in_its_data_parallel_form():
    from shoal import parallel
    from shoal.cli.registry import ALGORITHMS, CATALOG, PARALLEL

    assert PARALLEL["dgc"] is parallel.dgc and "dgc" not in ALGORITHMS
    options = CATALOG["algorithm"]["dgc"]()
    assert {"density", "momentum", "epoch_steps", "warmup", "clip_norm"} <= set(options)
    assert "shapes" not in options  # given by the model, not the config file


def test_the_warm_up_is_never_silently_off():
    # The factory used to default epoch_steps to 0, which turned the paper's warm-up off
    # without a word; the data-parallel factory refused. Both now ask for it.
    shapes = [(2, 3), (3,)]
    with pytest.raises(ValueError, match="needs epoch_steps"):
        dgc(0.1, shapes)
    assert dgc(0.1, shapes, epoch_steps=3).density_at(2) == 0.25  # the paper's 1/4
    assert dgc(0.1, shapes, epoch_steps=0).density_at(0) == 0.001  # off, when asked
    assert dgc(0.1, shapes, warmup_epochs=0).density_at(0) == 0.001
    assert dgc(0.1, shapes, density=1.0).density_at(0) == 1.0  # nothing to warm up
