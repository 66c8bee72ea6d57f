"""``vectorize="auto"``: which rounds it stacks on a CPU, by the padding they would carry."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from shoal.algorithms.base import LocalWork
from shoal.runtime.sim import SimRuntime, padded_share
from shoal.schedule import make_plan


def _plans(sizes: list[int], batch_size: int | None) -> list:
    work = LocalWork(epochs=1, batch_size=batch_size)
    return [make_plan(np.arange(n), work, 1, 0, 0, c) for c, n in enumerate(sizes)]


def test_padded_share_counts_the_rows_stacking_would_add() -> None:
    # Full batches of 2, 3 and 10 rows: stacked, each is 10 wide, 30 rows for 15 real ones.
    assert padded_share(_plans([2, 3, 10], None)) == pytest.approx(0.5)
    # Batches of 4 over 6 rows: 4 + 2, so 2 padded of 8, per client; the width is shared.
    assert padded_share(_plans([6, 6], 4)) == pytest.approx(0.25)
    assert padded_share(_plans([8], 4)) == 0.0 and padded_share([]) == 0.0


@pytest.mark.parametrize(("sizes", "stacked"), [([40] * 10, True), ([1] * 9 + [400], False)])
def test_auto_loops_a_cpu_round_that_would_be_mostly_padding(sizes, stacked) -> None:
    # Full-batch clients of very unequal size: stacked, the small ones were padded to the
    # largest (4.7x slower than the loop on 1,000 log-normal clients, same result).
    task = SimpleNamespace(
        model=nn.Sequential(nn.Linear(4, 3)),
        params_D=torch.zeros(15),
        plans=_plans(sizes, None),
    )
    assert SimRuntime("auto").vectorized(task) is stacked
    assert SimRuntime(True).vectorized(task) is True  # asked for: stacked anyway


def test_auto_loops_char_lstm_on_a_cpu() -> None:
    # Stacked, LEAF's char_lstm took 2.6x the loop's time for the same result.
    from shoal.models import char_lstm, mlp

    def task(model: nn.Module) -> SimpleNamespace:
        return SimpleNamespace(model=model, params_D=torch.zeros(3), plans=_plans([8, 8], 4))

    assert SimRuntime("auto").vectorized(task(char_lstm(hidden=4))) is False
    assert SimRuntime(True).vectorized(task(char_lstm(hidden=4))) is True
    assert SimRuntime("auto").vectorized(task(mlp(4, (8,), 3))) is True
