"""DistRuntime.predict: ranks score slices of the rows and all get every row's result."""

from __future__ import annotations

import torch

from core.helpers import tiny_data, tiny_model
from shoal.evaluate import predict
from shoal.functional import ParamSpec, cross_entropy
from shoal.runtime.dist import DistRuntime
from shoal.runtime.spawn import spawn_local


def _problem(n: int):
    model = tiny_model()
    spec = ParamSpec.of(model)
    data = tiny_data(n_train=max(n, 1), n_test=1)
    return model, spec, spec.flatten(model), data.train.x[:n], data.train.y[:n]


def _scores(sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    runtime = DistRuntime()
    out = []
    for n in sizes:
        model, spec, params, x, y = _problem(n)
        out.append(runtime.predict(model, spec, params, x, y, cross_entropy, batch_size=3))
    return out


def test_every_rank_gets_every_rows_score_in_order():
    sizes = [10, 2, 1]  # 10 over 3 ranks: 4 + 4 + 2 rows; 2 and 1: some ranks score none
    ranks = spawn_local(_scores, 3, sizes, timeout_s=120)
    for n, *per_rank in zip(sizes, *ranks):
        model, spec, params, x, y = _problem(n)
        loss_ref, correct_ref = predict(model, spec, params, x, y, cross_entropy, batch_size=1000)
        for loss_N, correct_N in per_rank:
            assert correct_N.dtype == torch.bool and torch.equal(correct_N, correct_ref)
            torch.testing.assert_close(loss_N, loss_ref, rtol=1e-6, atol=1e-7)
