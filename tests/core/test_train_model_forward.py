"""A user's model whose forward the runtimes would train silently wrong (or fail on in round 1)
is refused before round 1 in one line: random numbers, a buffer changed in forward, samples of a
batch mixed, an output that is not logits, token ids beyond an embedding. An embedding with a
``padding_idx`` is looped, since ``vmap`` gave its padding row a gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shoal.algorithms.base import LocalWork
from shoal.algorithms.fedavg import fedavg
from shoal.data.types import ArrayDataset, FederatedDataset
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

from .helpers import WSConv2d, tiny_data

CLIENTS = [np.arange(k, 240, 4) for k in range(4)]


def _train(model, data=None, vectorize=True, rounds=2):
    cfg = TrainConfig(
        rounds=rounds, sampler=ClientSampler(4), work=LocalWork(batch_size=8), progress=False
    )
    data = data if data is not None else tiny_data()
    return train(model, data, CLIENTS, fedavg(0.1), cfg, runtime=SimRuntime(vectorize=vectorize))


class _Body(nn.Module):
    """Linear-tanh-linear with one extra step in forward."""

    def __init__(self, extra):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.extra = nn.Linear(8, 16), nn.Linear(16, 3), extra
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        return self.b(self.extra(self, torch.tanh(self.a(x))))


def _count(m, h):
    if m.training:
        m.calls += 1
    return h


CASES = {
    "F.dropout": (lambda m, h: F.dropout(h, 0.5, m.training), "draws random numbers"),
    "noise": (lambda m, h: h + 0.1 * torch.randn_like(h), "draws random numbers"),
    "a counter": (_count, r"changes its buffer\(s\) calls in forward"),
    "batch centring": (lambda m, h: h - h.mean(0), "depends on the other samples of its batch"),
    "a tuple": (None, "returns a tuple; it must return one tensor of logits"),
}


@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_a_forward_the_runtimes_would_train_wrong_is_refused(case, vectorize):
    extra, match = CASES[case]
    model = _Body(extra if extra is not None else (lambda m, h: h))
    if extra is None:
        model.forward = lambda x: (model.b(torch.tanh(model.a(x))), x)  # type: ignore[method-assign]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=match):
        _train(model, vectorize=vectorize)
    # The probe left the model and torch's generator as they were.
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)


def test_an_output_of_another_shape_names_it():
    # [B, 3, 1]: "the model gives 1 logits per sample" before.
    model = nn.Sequential(nn.Linear(8, 3), nn.Unflatten(1, (3, 1)))
    with pytest.raises(ValueError, match=r"output has shape \(2, 3, 1\)"):
        _train(model)


def _tokens(vocab: int, bad_row: int | None = None) -> FederatedDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (300, 5), generator=g)
    x[:, 0] = torch.randint(1, vocab, (300,), generator=g)  # every sample has a real token
    x[::3, 3:] = 0  # and some padding
    if bad_row is not None:
        x[bad_row, 2] = vocab + 4
    y = (x[:, 0] % 3).long()
    return FederatedDataset(
        "tokens", ArrayDataset(x[:240], y[:240], 3), ArrayDataset(x[240:], y[240:], 3)
    )


class _Bag(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out = nn.Embedding(12, 6, **kw), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.emb(x).mean(1))


def test_a_token_id_beyond_the_embedding_is_refused_before_round_1():
    # Row 100 only: the first samples, which the shape check tries, were in range, and round 1
    # failed with a bare IndexError.
    with pytest.raises(ValueError, match="training sample 100 has token id 16.*embedding rows: 12"):
        _train(_Bag(), _tokens(12, bad_row=100))


@pytest.mark.parametrize("kw", [{"max_norm": 1.0}, {"scale_grad_by_freq": True}])
def test_an_embedding_that_sees_the_padding_rows_is_refused(kw):
    with pytest.raises(ValueError, match="model.emb is an Embedding with max_norm"):
        _train(_Bag(**kw), _tokens(12))


def test_an_embeddings_padding_row_gets_no_gradient():
    # PyTorch's rule: the padding_idx row is never updated. Vectorized, every stacked client but
    # the first moved it (vmap's rule under one backward); "auto" loops such a model now.
    model = _Bag(padding_idx=0)
    row0 = model.emb.weight[0].detach().clone()
    res = _train(model, _tokens(12), vectorize="auto", rounds=3)
    trained = res.spec.unflatten(res.params)["emb.weight"]
    assert torch.equal(trained[0].cpu(), row0)
    assert not torch.equal(trained[1], model.emb.weight[1])  # the others trained
    with pytest.raises(ValueError, match="vectorize=True cannot stack .* Embedding"):
        _train(_Bag(padding_idx=0), _tokens(12), vectorize=True)


class _Branching(nn.Module):
    """Control flow on a tensor's value: fine in a loop, impossible to stack with vmap."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 3)

    def forward(self, x):
        return self.a(x) if x.sum() > 0 else self.a(-x)


def test_a_model_vmap_cannot_stack_says_how_to_train_it():
    # torch's "vmap: It looks like you're attempting to use a Tensor in some data-dependent
    # control flow" came from inside round 1.
    with pytest.raises(ValueError, match=r"cannot stack this model's clients.*vectorize=False"):
        _train(_Branching(), vectorize=True)
    _train(_Branching(), vectorize=False)


class _AuxHead(nn.Module):
    """Inception-style: an extra output in training mode only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 3)

    def forward(self, x):
        out = self.a(x)
        return (out, out) if self.training else out


def test_a_tuple_returned_in_training_mode_only_is_refused():
    # The eval-mode check passed it, and the training-mode probe failed with a bare TypeError.
    with pytest.raises(ValueError, match="in training mode the model returns a tuple"):
        _train(_AuxHead())


def _conv_data(channels: int = 1) -> tuple[FederatedDataset, list[np.ndarray]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, channels, 6, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    data = FederatedDataset("t", ArrayDataset(x[:30], y[:30], 3), ArrayDataset(x[30:], y[30:], 3))
    return data, [np.arange(15), np.arange(15, 30)]


def test_a_runtime_used_again_trains_the_model_as_it_is_now():
    """The looped runtime kept its work copy of the model across train() calls: a module
    attribute changed in between (a sweep over LeakyReLU's slope) trained the stale copy."""
    data, clients = _conv_data()
    cfg = TrainConfig(rounds=1, sampler=ClientSampler(2), progress=False, client_eval=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.LeakyReLU(0.01), nn.Flatten(), nn.Linear(48, 3))
    runtime = SimRuntime(vectorize=False)
    first = train(model, data, clients, fedavg(0.1), cfg, runtime=runtime).params
    model[1].negative_slope = 0.5
    again = train(model, data, clients, fedavg(0.1), cfg, runtime=runtime).params
    fresh = train(model, data, clients, fedavg(0.1), cfg, runtime=SimRuntime(vectorize=False))
    assert torch.equal(again, fresh.params) and not torch.equal(again, first)


@pytest.mark.parametrize("vectorize", [False, True])
def test_a_model_that_views_its_kernels_trains_and_is_scored(vectorize):
    """Its kernels reached it in channels-last layout, where .view fails: the looped round 1
    and the vectorized run's first evaluation ended in "view size is not compatible"."""
    data, clients = _conv_data(channels=3)  # one channel: a channels-last kernel is contiguous
    cfg = TrainConfig(rounds=2, sampler=ClientSampler(2), progress=False, client_eval=False)
    torch.manual_seed(0)
    model = nn.Sequential(WSConv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    runtime = SimRuntime(vectorize=vectorize)
    result = train(model, data, clients, fedavg(0.1), cfg, runtime=runtime)
    assert np.isfinite(result.metrics[-1]["test_loss"])


@pytest.mark.parametrize(("batch_size", "vectorize"), [(10, False), (10, True), (None, True)])
def test_padding_rows_are_the_clients_own(batch_size, vectorize):
    """Short batches (and, stacked, clients of fewer rows) were padded with the dataset's row 0,
    masked out by multiplying: a row 0 no client holds, with an infinite loss, made every
    padded batch NaN (0 * inf) and the run stop as diverged."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    x[0] = -1e3  # an outlier that no client holds

    def nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # inf on row 0
        return -torch.log(torch.softmax(logits, -1).gather(-1, target[:, None]).squeeze(-1))

    data = FederatedDataset("t", ArrayDataset(x[:30], y[:30], 3), ArrayDataset(x[30:], y[30:], 3))
    clients = [np.arange(1, 16), np.arange(16, 30)]  # 15 and 14 rows
    torch.manual_seed(1)
    model = nn.Linear(6, 3)
    assert torch.isinf(nll(model(x[:1]), y[:1])).all()
    work = LocalWork(epochs=1, batch_size=batch_size)
    cfg = TrainConfig(rounds=1, sampler=ClientSampler(2), work=work, progress=False)
    runtime = SimRuntime(vectorize=vectorize)
    result = train(model, data, clients, fedavg(0.1), cfg, loss_fn=nll, runtime=runtime)
    assert np.isfinite(result.metrics[-1]["train_loss"])
