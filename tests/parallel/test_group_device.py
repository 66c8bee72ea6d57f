"""Which device a distributed run trains on: the process group's, whatever ``config.device``
spells it as, and a config naming another device is refused (not silently ignored)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from shoal.parallel import ParallelConfig
from shoal.parallel.loop import _device

GPU1 = torch.device("cuda", 1)


def _on(device: torch.device) -> SimpleNamespace:
    return SimpleNamespace(device=device)  # what _device reads of a DistComm


@pytest.mark.parametrize("spelled", ["auto", "cuda", "cuda:1"])
def test_a_config_naming_the_groups_gpu_trains_there(spelled: str) -> None:
    assert _device(ParallelConfig(steps=1, device=spelled), _on(GPU1)) == GPU1


@pytest.mark.parametrize("spelled", ["cpu", "cuda:0"])
def test_a_config_naming_another_device_is_refused(spelled: str) -> None:
    with pytest.raises(ValueError, match=r"group uses cuda:1; leave device='auto'"):
        _device(ParallelConfig(steps=1, device=spelled), _on(GPU1))


def test_a_cpu_group_trains_on_the_cpu_and_refuses_a_gpu() -> None:
    cpu = torch.device("cpu")
    assert _device(ParallelConfig(steps=1, device="cpu"), _on(cpu)) == cpu
    with pytest.raises(ValueError, match="group uses cpu"):
        _device(ParallelConfig(steps=1, device="cuda"), _on(cpu))
