"""The driver: the round's train loss is per sample, the
summary and eval_train numbers are the final model's, and clients train from the
downlink copy they hold, all against plain PyTorch recomputations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shoal.algorithms.base import LocalWork
from shoal.algorithms.fedavg import fedavg
from shoal.compress import top_k
from shoal.functional import ParamSpec
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model, unequal_clients


def _config(**kw):
    base = dict(rounds=4, sampler=ClientSampler(10), progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _scores(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model = tiny_model()
    ParamSpec.of(model).load_into(model, params)
    with torch.no_grad():
        out = model(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("vectorize", [False, True])
def test_round_train_loss_is_the_per_sample_mean(vectorize):
    """One full-batch step per client: every client's loss is taken at the global model,
    so the round's train loss is the pooled cross-entropy over all clients' rows (not the
    mean of per-client means: the clients differ in size)."""
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    res = train(
        tiny_model(),
        data,
        clients,
        fedavg(0.2),
        _config(rounds=1, work=LocalWork(steps=1, batch_size=None)),
        runtime=SimRuntime(vectorize=vectorize),
    )
    start = ParamSpec.of(tiny_model()).flatten(tiny_model())
    pooled, _ = _scores(start, data.train.x, data.train.y)
    per_client = np.mean([_scores(start, data.train.x[c], data.train.y[c])[0] for c in clients])
    assert abs(pooled - per_client) > 1e-3  # the two readings differ on this split
    assert res.metrics[0]["train_loss"] == pytest.approx(pooled, abs=1e-6)


def test_summary_and_eval_train_describe_the_final_model():
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    cfg = _config(rounds=5, work=LocalWork(epochs=1, batch_size=8), eval_train=True)
    res = train(tiny_model(), data, clients, fedavg(0.2), cfg)
    test_loss, test_acc = _scores(res.params, data.test.x, data.test.y)
    train_loss, train_acc = _scores(res.params, data.train.x, data.train.y)
    last = res.metrics[-1]
    assert last["test_accuracy"] == pytest.approx(test_acc, abs=1e-6)
    assert last["global_train_accuracy"] == pytest.approx(train_acc, abs=1e-6)
    assert last["global_train_loss"] == pytest.approx(train_loss, abs=1e-5)
    assert abs(train_loss - test_loss) > 1e-3  # train and test numbers are told apart
    accs = [r["test_accuracy"] for r in res.metrics]
    assert accs[0] != accs[-1]  # the first evaluation is not the final one
    assert res.summary["final_test_accuracy"] == pytest.approx(test_acc, abs=1e-6)
    assert res.summary["final_test_loss"] == pytest.approx(test_loss, abs=1e-5)
    assert res.summary["best_test_accuracy"] == max(accs)
    # device "auto" and num_threads 0 are saved as given; what they were is in the summary
    env = res.summary["environment"]
    assert env["device"] == "cpu" and env["torch_threads"] == torch.get_num_threads()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch"] == torch.__version__


def _grad(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model = tiny_model()
    spec = ParamSpec.of(model)
    spec.load_into(model, params)
    loss = F.cross_entropy(model(x), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())])


def _top_k(v: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros_like(v)
    idx = v.abs().topk(k).indices
    out[idx] = v[idx]
    return out


@pytest.mark.parametrize("vectorize", [False, True])
def test_clients_train_from_the_compressed_downlink_copy(vectorize):
    """One client, one full-batch step per round, top-k downlink. By hand: the copy w starts
    as x0 (first broadcast dense) and then w <- w + topk(x - w); the client steps from w and
    sends y - w, so x <- x - lr * grad(w)."""
    data = tiny_data()
    clients = [np.arange(40)]
    lr, k, rounds = 0.5, 12, 4
    x_rows, y_rows = data.train.x[:40], data.train.y[:40]
    x = ParamSpec.of(tiny_model()).flatten(tiny_model())
    w = x.clone()
    for r in range(rounds):
        if r > 0:
            w = w + _top_k(x - w, k)
        x = x - lr * _grad(w, x_rows, y_rows)
    res = train(
        tiny_model(),
        data,
        clients,
        fedavg(lr),
        _config(rounds=rounds, sampler=ClientSampler(1), work=LocalWork(steps=1, batch_size=None)),
        downlink_compressor=top_k(k=k),
        runtime=SimRuntime(vectorize=vectorize),
    )
    torch.testing.assert_close(res.params, x, rtol=0, atol=1e-6)
