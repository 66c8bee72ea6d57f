"""Every main path on a CUDA device gives what it gives on the CPU.

Skipped where no GPU is present. ``SHOAL_TEST_DEVICE`` names the device to compare with the
CPU (default ``cuda``; ``cpu`` runs these tests on a machine without a GPU, which checks the
tests themselves). Deterministic paths must agree to float tolerance (different kernels sum in
other orders); stochastic compressors draw from the device's own generator, so for them only
the bytes must agree and the training must stay finite. The NCCL test needs two GPUs.
"""

from __future__ import annotations

import os

import pytest
import torch

from core import helpers
from parallel import cases
from shoal.aggregate import median
from shoal.algorithms import fedadam, fedavg, scaffold
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
}


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "looped"])
@pytest.mark.parametrize("name", sorted(FEDERATED))
def test_federated_training_on_the_device_matches_the_cpu(name: str, vectorize: bool) -> None:
    algorithm, compressor, aggregator = FEDERATED[name]
    data = helpers.tiny_data()
    clients = helpers.unequal_clients(len(data.train), 8)

    def run(device: str) -> TrainResult:
        config = TrainConfig(rounds=3, sampler=ClientSampler(4), device=device, progress=False)
        return train(
            helpers.tiny_model(), data, clients, algorithm, config,
            runtime=SimRuntime(vectorize=vectorize), compressor=compressor,
            aggregator=aggregator,
        )  # fmt: skip

    cpu, dev = run("cpu"), run(DEVICE)
    assert dev.params.device.type == torch.device(DEVICE).type
    up = [r["uplink_bytes"] for r in dev.metrics]
    assert up == [r["uplink_bytes"] for r in cpu.metrics]
    if compressor is not None and compressor.name.startswith("qsgd"):
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
