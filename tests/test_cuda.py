"""Every main path on a CUDA device gives what it gives on the CPU.

Skipped where no GPU is present. ``SHOAL_TEST_DEVICE`` names the device to compare with the
CPU (default ``cuda``; ``cpu`` runs these tests on a machine without a GPU, which checks the
tests themselves). Deterministic paths must agree to float tolerance (different kernels sum in
other orders); stochastic compressors draw from the device's own generator, so for them only
the bytes must agree and the training must stay finite. The real-process tests run one process
(NCCL wants a GPU per process; with one GPU that is all it allows): over NCCL, with the CPU
bookkeeping on the group's gloo side. The probe's test needs two GPUs.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from core import helpers
from parallel import cases
from shoal import aggregate as ag
from shoal.aggregate import median
from shoal.algorithms import fedadam, fedavg, scaffold
from shoal.attacks import byzantine, sign_flip
from shoal.compress import error_feedback, qsgd, top_k
from shoal.parallel import SimComm
from shoal.runtime.sim import SimRuntime
from shoal.train import ClientSampler, TrainConfig, TrainResult, train

DEVICE = os.environ.get("SHOAL_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device"
)
STOCHASTIC = {"sync_sgd_qsgd"}  # quantizers draw from the device's generator
TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_parallel_case_on_the_device_matches_the_cpu(name: str) -> None:
    cpu = cases.run_case(name, SimComm(4), device="cpu")
    dev = cases.run_case(name, SimComm(4), device=DEVICE)
    assert dev.params.device.type == torch.device(DEVICE).type
    assert [r["bytes_sent"] for r in dev.metrics] == [r["bytes_sent"] for r in cpu.metrics]
    if name in STOCHASTIC:
        assert torch.isfinite(dev.params).all()
        return
    torch.testing.assert_close(dev.params.cpu(), cpu.params, **TOL)
    for a, b in zip(dev.metrics, cpu.metrics):
        assert a["sim_seconds"] == pytest.approx(b["sim_seconds"], rel=1e-6)
        if a.get("test_accuracy") is not None:
            assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.03)


FEDERATED = {
    "fedavg_topk_ef_median": (fedavg(0.1), error_feedback(top_k(ratio=0.2)), median()),
    "scaffold": (scaffold(0.1), None, None),
    "fedadam_qsgd": (fedadam(0.1, server_lr=0.01), qsgd(4), None),
    # The attackers' crafted rows go through the compressor (shoal.runtime.inbox).
    "fedavg_topk_signflip_trimmed": (fedavg(0.1), top_k(ratio=0.2), ag.trimmed_mean(1)),
}
BYZANTINE = {"fedavg_topk_signflip_trimmed": byzantine(2, 8, sign_flip(), seed=1)}


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "looped"])
@pytest.mark.parametrize("name", sorted(FEDERATED))
def test_federated_training_on_the_device_matches_the_cpu(name: str, vectorize: bool) -> None:
    cpu, dev = (_federated(name, d, SimRuntime(vectorize=vectorize)) for d in ("cpu", DEVICE))
    assert dev.params.device.type == torch.device(DEVICE).type
    up = [r["uplink_bytes"] for r in dev.metrics]
    assert up == [r["uplink_bytes"] for r in cpu.metrics]
    if name == "fedadam_qsgd":
        assert torch.isfinite(dev.params).all()
        return
    torch.testing.assert_close(dev.params.cpu(), cpu.params, **TOL)


def _probe_on_the_device(device: str) -> list[dict]:
    from shoal.parallel import DistComm
    from shoal.parallel.probe import probe
    from shoal.runtime.procgroup import init_from_env, shutdown

    comm = DistComm(init_from_env(device=device))
    try:
        return probe(comm, [1024, 1 << 20, 4 << 20], repeats=1)
    finally:
        shutdown()


def test_probe_runs_over_the_devices_backend() -> None:
    # NCCL wants one GPU per process.
    if DEVICE.startswith("cuda") and torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs two GPUs")
    from shoal.runtime.spawn import spawn_local

    rows = spawn_local(_probe_on_the_device, 2, DEVICE.split(":")[0])[0]
    assert len(rows) == 9 and all(r["seconds"] > 0 and r["a"] > 0 for r in rows)


ONE_PROCESS_CASES = [
    "sync_sgd_buckets",
    "sync_sgd_topk_ef",
    "sync_sgd_powersgd",
    "dgc",
    "local_sgd",
]


def _parallel_cases_over_the_backend(device: str) -> dict[str, tuple[torch.Tensor, list]]:
    from shoal.parallel import DistComm
    from shoal.runtime.procgroup import init_from_env

    ctx = init_from_env(device=device)
    out = {}
    for name in ONE_PROCESS_CASES:
        res = cases.run_case(name, DistComm(ctx), device=device)  # a fresh byte count
        assert res.params.device.type == torch.device(device).type
        out[name] = (res.params.cpu(), [r["bytes_sent"] for r in res.metrics])
    return out


def test_dist_comm_over_the_devices_backend_matches_simcomm_on_the_cpu() -> None:
    from shoal.runtime.spawn import spawn_local

    got = spawn_local(_parallel_cases_over_the_backend, 1, DEVICE)[0]
    for name in ONE_PROCESS_CASES:
        ref = cases.run_case(name, SimComm(1), device="cpu")
        params, sent = got[name]
        assert sent == [r["bytes_sent"] for r in ref.metrics], name
        torch.testing.assert_close(params, ref.params, **TOL, msg=name)


def _federated_over_the_backend(device: str) -> dict[str, TrainResult]:
    from shoal.runtime.dist import DistRuntime

    runtime = DistRuntime(SimRuntime(vectorize=True), device=device)
    out = {}
    for name in ("fedavg_topk_ef_median", "scaffold"):
        res = _federated(name, device, runtime)
        out[name] = dataclasses.replace(res, params=res.params.cpu())
    return out


def _federated(name: str, device: str, runtime: object) -> TrainResult:
    algorithm, compressor, aggregator = FEDERATED[name]
    data = helpers.tiny_data()
    clients = helpers.unequal_clients(len(data.train), 8)
    config = TrainConfig(rounds=3, sampler=ClientSampler(4), device=device, progress=False)
    return train(
        helpers.tiny_model(), data, clients, algorithm, config, runtime=runtime,
        compressor=compressor, aggregator=aggregator, byzantine=BYZANTINE.get(name),
    )  # fmt: skip


def test_dist_runtime_over_the_devices_backend_matches_the_cpu() -> None:
    # The round statistics DistRuntime reduces live on the CPU: under a plain NCCL group
    # that reduction failed ("No backend type associated with device type cpu").
    from shoal.runtime.spawn import spawn_local

    got = spawn_local(_federated_over_the_backend, 1, DEVICE)[0]
    for name, dev in got.items():
        cpu = _federated(name, "cpu", SimRuntime(vectorize=True))
        assert [r["uplink_bytes"] for r in dev.metrics] == [r["uplink_bytes"] for r in cpu.metrics]
        torch.testing.assert_close(dev.params, cpu.params, **TOL, msg=name)


def test_predict_scores_cpu_data_with_a_model_on_the_device() -> None:
    # A model trained on a GPU, scored on test data kept on the CPU (each batch moves over).
    from shoal.evaluate import predict
    from shoal.functional import ParamSpec, cross_entropy

    data, model = helpers.tiny_data(), helpers.tiny_model()
    spec = ParamSpec.of(model)
    params = spec.flatten(model)
    x, y = data.test.x, data.test.y
    want = predict(model, spec, params, x, y, cross_entropy, batch_size=7)
    got = predict(model.to(DEVICE), spec, params.to(DEVICE), x, y, cross_entropy, batch_size=7)
    assert got[0].device.type == torch.device(DEVICE).type
    torch.testing.assert_close(got[0].cpu(), want[0], **TOL)
    assert torch.equal(got[1].cpu(), want[1])


@pytest.mark.parametrize(
    "agg",
    [
        ag.mean(),
        ag.median(1),
        ag.trimmed_mean(1),
        ag.krum(1),
        ag.multi_krum(1),
        ag.bulyan(1),
        ag.geometric_median(),
        ag.centered_clip(),
        ag.nnm(ag.trimmed_mean(1), 1),
        ag.flag_aggregator(),
    ],
    ids=repr,
)
def test_aggregators_take_cpu_weights_with_an_inbox_on_the_device(agg: ag.Aggregator) -> None:
    # torch.ones(n) is how a caller writes equal weights; the rules that reorder or use the
    # weights indexed or multiplied a CPU tensor with a device one.
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = agg(x.to(DEVICE), torch.ones(9, dtype=torch.float64))
    assert got.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(got.cpu(), agg(x, torch.ones(9, dtype=torch.float64)), **TOL)


class _FrozenRecurrent(torch.nn.Module):
    """A two-layer LSTM with dropout, frozen with ``.eval()`` (its dropout off)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = torch.nn.LSTM(1, 8, num_layers=2, dropout=0.5, batch_first=True)
        self.out = torch.nn.Linear(8, 3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x.unsqueeze(-1))[0][:, -1])


def test_a_recurrent_model_in_eval_mode_trains_on_the_device_as_on_the_cpu() -> None:
    # cuDNN has no RNN backward in eval mode ("cudnn RNN backward can only be called in
    # training mode"): both runtimes failed in their first step on a GPU.
    from shoal.parallel import ParallelConfig, sync_sgd, train_parallel

    data = helpers.tiny_data()
    clients = helpers.unequal_clients(len(data.train), 4)
    fed, par = {}, {}
    for device in ("cpu", DEVICE):
        config = TrainConfig(rounds=2, sampler=ClientSampler(2), device=device, progress=False)
        fed[device] = train(_FrozenRecurrent(), data, clients, fedavg(0.1), config).params.cpu()
        pconfig = ParallelConfig(steps=3, batch_size=16, device=device, progress=False, seed=3)
        run = train_parallel(_FrozenRecurrent(), data, clients, sync_sgd(0.1), pconfig, SimComm(4))
        par[device] = run.params.cpu()
    torch.testing.assert_close(fed[DEVICE], fed["cpu"], **TOL)
    torch.testing.assert_close(par[DEVICE], par["cpu"], **TOL)


def test_model_pt_of_a_run_on_the_device_holds_cpu_tensors(tmp_path) -> None:
    # A model.pt written on a GPU machine must load with a plain torch.load on one without.
    data = helpers.tiny_data()
    config = TrainConfig(rounds=1, sampler=ClientSampler(2), device=DEVICE, progress=False)
    res = train(helpers.tiny_model(), data, helpers.unequal_clients(len(data.train), 4),
                fedavg(0.1), config, out_dir=tmp_path)  # fmt: skip
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert {v.device.type for v in saved.values()} == {"cpu"}
    for name, trained in res.spec.unflatten(res.params).items():
        assert torch.equal(saved[name], trained.cpu()), name
