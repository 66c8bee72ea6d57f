"""The runtime-equivalence suite on real processes: DistRuntime with 2 and 4 gloo ranks gives
the same global model as SimRuntime for every synchronous algorithm (to 1e-5), including a
robust aggregator under attack, a stateful compressor, and a checkpointed run resumed."""

from __future__ import annotations

import pytest
import torch

from shoal.runtime.sim import SimRuntime
from shoal.runtime.spawn import spawn_local

from .dist_cases import cases, run, worker

# Every algorithm runs with the same LocalWork; FedSGD's warning that it uses its own is
# expected here (tests/algorithms/test_fedavg_family.py checks that it is given).
pytestmark = pytest.mark.filterwarnings("ignore:fedsgd fixes its own local work")


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    ref = {n: run(n, SimRuntime(vectorize=False)).params for n in cases()}
    whole = run("scaffold", SimRuntime(vectorize=False), rounds=4)
    ref["scaffold-resumed"], ref["metrics"] = whole.params, whole.metrics
    return ref


@pytest.mark.parametrize("world", [2, 4])
def test_dist_runtime_equals_sim(reference, world, tmp_path):
    results = spawn_local(worker, world, list(cases()), str(tmp_path), timeout_s=240)
    for rank, got in enumerate(results):
        for name, ref in reference.items():
            if name == "metrics":
                continue
            torch.testing.assert_close(got[name], ref, rtol=0, atol=1e-5, msg=f"{name} r{rank}")
    # The runs moved the model: equal no-ops would pass trivially.
    assert (reference["fedavg"] - reference["fedsgd"]).abs().max() > 1e-3
    # Only rank 0 evaluates and writes; its resumed metrics cover all four rounds.
    metrics = results[0]["metrics"]
    assert [r["round"] for r in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["test_accuracy"] is not None
    for got, ref in zip(metrics, reference["metrics"]):
        assert got["uplink_bytes"] == ref["uplink_bytes"]  # summed over ranks, exactly
        assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
