"""Training in the model's own dtype: a float64 model trains in float64, half precision and
mixed dtypes are refused at the entry."""

import pytest
import torch

from shoal.aggregate import geometric_median
from shoal.algorithms import fedavg
from shoal.algorithms.base import LocalWork
from shoal.compress import error_feedback, top_k
from shoal.data.types import ArrayDataset, FederatedDataset
from shoal.functional import ParamSpec
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model, unequal_clients


def _double(data: FederatedDataset) -> FederatedDataset:
    return FederatedDataset(
        data.name,
        ArrayDataset(data.train.x.double(), data.train.y, data.train.num_classes),
        ArrayDataset(data.test.x.double(), data.test.y, data.test.num_classes),
    )


def _run(model, data, vectorize=True, **kw):
    cfg = TrainConfig(
        rounds=2, sampler=ClientSampler(5), work=LocalWork(epochs=1, batch_size=8), progress=False
    )
    clients = unequal_clients(len(data.train), 8)
    return train(model, data, clients, fedavg(0.2), cfg, runtime=SimRuntime(vectorize), **kw)


@pytest.mark.parametrize("vectorize", [True, False])
def test_a_float64_model_trains_in_float64(vectorize):
    """The parameters were cast to float32, so a float64 model met float32 weights inside
    vmap ("expected scalar type Float but found Double"); its initial parameters were rounded
    to float32 as well."""
    model = tiny_model().double()
    with torch.no_grad():  # parameters that float32 cannot hold
        for p in model.parameters():
            p.add_(1e-10)
    init = ParamSpec.of(model).flatten(model)
    assert init.dtype == torch.float64
    assert not torch.equal(init, init.float().double())  # not rounded to float32
    res = _run(
        model,
        _double(tiny_data()),
        vectorize,
        compressor=error_feedback(top_k(ratio=0.3)),
        aggregator=geometric_median(),
    )
    assert res.params.dtype == torch.float64
    assert torch.isfinite(res.params).all() and not torch.equal(res.params.cpu(), init)


def test_float64_runtimes_agree_to_float64_rounding():
    data = _double(tiny_data())
    vec = _run(tiny_model().double(), data, vectorize=True).params
    loop = _run(tiny_model().double(), data, vectorize=False).params
    torch.testing.assert_close(vec, loop, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cast", [torch.nn.Module.half, torch.nn.Module.bfloat16])
def test_half_precision_and_mixed_models_are_refused_at_the_entry(cast):
    with pytest.raises(ValueError, match="model: trainable parameters must all be float32"):
        _run(cast(tiny_model()), tiny_data())
    mixed = tiny_model()
    mixed[0].double()
    with pytest.raises(ValueError, match="got float32, float64"):
        _run(mixed, tiny_data())


class _Float(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def test_a_frozen_float64_layer_in_a_float32_model_trains():
    """Only the trainable parameters set the training dtype: a frozen float64 layer (say, a
    fixed feature map) in front of a float32 model is the model's own, used as it is."""
    frozen = torch.nn.Linear(8, 8).double().requires_grad_(False)
    res = _run(torch.nn.Sequential(frozen, _Float(), tiny_model()), _double(tiny_data()))
    assert res.params.dtype == torch.float32


@pytest.mark.parametrize("double_first", [False, True])
def test_a_resume_with_a_model_of_another_dtype_is_refused(tmp_path, double_first):
    # The checkpoint's parameters came back in their own dtype, and the first step failed
    # deep inside the model ("expected scalar type Float but found Double").
    def fit(double, rounds):
        model, data = tiny_model(), tiny_data()
        if double:
            model, data = model.double(), _double(data)
        cfg = TrainConfig(rounds=rounds, sampler=ClientSampler(5), progress=False)
        clients = unequal_clients(len(data.train), 8)
        train(model, data, clients, fedavg(0.2), cfg, out_dir=tmp_path, resume=rounds > 1)

    fit(double_first, 1)
    match = "cannot resume: .* holds float(32|64) parameters, but this model trains in float"
    with pytest.raises(ValueError, match=match):
        fit(not double_first, 2)
    fit(double_first, 2)  # the same dtype goes on
