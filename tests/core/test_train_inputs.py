"""A user's own model, data and clients: what cannot be trained is refused before round 1 in
one line naming it, instead of a traceback from inside ``vmap`` or an evaluation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shoal.algorithms.base import LocalWork
from shoal.algorithms.fedavg import fedavg
from shoal.attacks import byzantine, sign_flip
from shoal.data.types import ArrayDataset, FederatedDataset
from shoal.parallel import ParallelConfig, SimComm, sync_sgd, train_parallel
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model

CLIENTS = [np.arange(k, 240, 4) for k in range(4)]


def _config(**kw):
    base = dict(rounds=2, sampler=ClientSampler(2), work=LocalWork(batch_size=8), progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _train(model=None, data=None, clients=CLIENTS, **kw):
    model = model if model is not None else tiny_model()
    data = data if data is not None else tiny_data()
    return train(model, data, clients, fedavg(0.1), _config(), **kw)


def _with(layer: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), layer, nn.Tanh(), nn.Linear(16, 3))


def _instance_norm() -> nn.Module:
    """InstanceNorm keeping running statistics (updated in place in training mode)."""
    norm = nn.InstanceNorm1d(4, track_running_stats=True)
    return nn.Sequential(nn.Unflatten(1, (4, 4)), norm, nn.Flatten())


@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (nn.BatchNorm1d(16), "model.1 is a BatchNorm1d"),
        # No running statistics: eval mode normalizes by the batch too (padding rows in it).
        (nn.BatchNorm1d(16, track_running_stats=False).eval(), "model.1 is a BatchNorm1d"),
        (_instance_norm(), "model.1.1 is a InstanceNorm1d"),
        (nn.Dropout(0.5), "model.1 is a Dropout"),
        # Random negative slopes in training mode; `vmap` refuses aten::rrelu.
        (nn.RReLU(), "model.1 is an RReLU"),
    ],
)
def test_batch_norm_and_dropout_are_refused(layer, match, vectorize):
    with pytest.raises(ValueError, match=match):
        _train(_with(layer), runtime=SimRuntime(vectorize=vectorize))
    with pytest.raises(ValueError, match=match):
        train_parallel(
            _with(layer),
            tiny_data(),
            CLIENTS,
            sync_sgd(0.1),
            ParallelConfig(steps=2, progress=False),
            SimComm(4),
        )


def test_dropout_off_and_batch_norm_in_eval_mode_train():
    _train(_with(nn.Dropout(0.0)))
    _train(_with(nn.BatchNorm1d(16)).eval())
    _train(_with(_instance_norm()).eval())
    _train(_with(nn.Sequential(nn.Unflatten(1, (4, 4)), nn.InstanceNorm1d(4), nn.Flatten())))


@pytest.mark.parametrize("vectorize", [False, True])
def test_submodules_frozen_in_eval_mode_stay_so(vectorize):
    """A model in training mode with its BatchNorm and Dropout put in eval mode (frozen
    statistics, as for fine-tuning) trains as plain PyTorch does, and keeps those modes: the
    checks and evaluations restored the mode with one model.train(True), and the looped
    runtime set its work copy so, which put both back in training mode."""

    def frozen() -> nn.Module:
        model = _with(nn.BatchNorm1d(16))
        model.insert(3, nn.Dropout(0.5))
        with torch.no_grad():
            model[1].running_mean.normal_()
        model[1].eval()
        model[3].eval()
        return model

    data, lr, rounds = tiny_data(), 0.1, 2
    ref = frozen()
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    for _ in range(rounds):  # one client holding all rows, one full-batch step a round
        opt.zero_grad()
        F.cross_entropy(ref(data.train.x), data.train.y).backward()
        opt.step()

    model = frozen()
    stats = model[1].running_mean.clone()
    config = _config(rounds=rounds, sampler=ClientSampler(1), work=LocalWork(batch_size=240))
    got = train(model, data, [np.arange(240)], fedavg(lr), config, runtime=SimRuntime(vectorize))
    assert [m.training for m in model] == [True, False, True, False, True]
    assert torch.equal(model[1].running_mean.cpu(), stats)
    torch.testing.assert_close(got.params.cpu(), got.spec.flatten(ref), rtol=0, atol=1e-6)


def _data(x, x_test=None):
    base = tiny_data()
    x_test = x_test if x_test is not None else base.test.x
    return FederatedDataset(
        "tiny", ArrayDataset(x, base.train.y, 3), ArrayDataset(x_test, base.test.y, 3)
    )


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            lambda d: _data(d.train.x.double(), d.test.x.double()),
            r"model's parameters are torch.float32, the training samples torch.float64",
        ),
        (lambda d: _data(d.train.x[:, :5], d.test.x[:, :5]), r"\(5,\) torch.float32"),
        (lambda d: _data(d.train.x, d.test.x[:, :5]), "test samples are"),
    ],
)
def test_data_the_model_cannot_take_is_refused(data, match):
    with pytest.raises(ValueError, match=match):
        _train(data=data(tiny_data()))


def test_too_few_logits_and_a_reduced_loss_are_refused():
    torch.manual_seed(0)
    with pytest.raises(
        ValueError, match=r"output has shape \(2, 2\) .* at least the data.s 3 classes"
    ):
        _train(nn.Linear(8, 2))
    with pytest.raises(ValueError, match="one loss per sample"):
        _train(loss_fn=F.cross_entropy)


def test_nll_loss_of_raw_logits_warns_and_cross_entropy_does_not():
    # Its "loss" is -logit[y]: it trained to chance without a word.
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="negative losses .* nn.NLLLoss expects log-prob"):
        _train(loss_fn=nn.NLLLoss(reduction="none"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(
            nn.Sequential(nn.Linear(8, 3), nn.LogSoftmax(-1)), loss_fn=nn.NLLLoss(reduction="none")
        )


def test_a_final_softmax_under_cross_entropy_warns():
    # Probabilities taken as logits trained badly (0.128 against 0.278 in 2 rounds), silently.
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="outputs are probabilities .* remove the final softmax"):
        _train(nn.Sequential(nn.Linear(8, 3), nn.Softmax(-1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(nn.Sequential(nn.Linear(8, 3), nn.LogSoftmax(-1)))  # log-probabilities are fine


def test_clients_as_lists_train_and_float_indices_are_refused():
    ref = _train()
    as_lists = _train(clients=[c.tolist() for c in CLIENTS])
    assert torch.equal(ref.params, as_lists.params)
    with pytest.raises(ValueError, match="client 0 must be a 1-D integer index array"):
        _train(clients=[c.astype(np.float64) for c in CLIENTS])


@pytest.mark.parametrize(
    ("key", "value"), [("rounds", 2.5), ("eval_batch_size", 0), ("checkpoint_every", "1")]
)
def test_counts_must_be_integers(key, value):
    with pytest.raises(ValueError, match=f"{key} must be an integer >= 1"):
        _config(**{key: value})
    assert _config(**{key: np.int64(3)}) is not None  # a count computed with numpy


@pytest.mark.parametrize("seed", [None, -1, 1.5])
def test_the_seed_must_be_a_non_negative_integer(seed):
    # seed=None failed 13 frames deep in numpy's SeedSequence, in round 1.
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        _config(seed=seed)


def test_a_seed_beyond_32_bits_is_refused():
    # numpy's SeedSequence splits it into 32-bit words: seed 2**32 + 7 keyed its round-0 client
    # sample [7, 1, 0, 0], which is seed 7's round-1 sample, so the two runs shared draws.
    sample = ClientSampler(5)
    assert np.array_equal(sample(np.ones(20), 2**32 + 7, 0), sample(np.ones(20), 7, 1))
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0 and < 2\*\*32"):
        _config(seed=2**32 + 7)
    assert _config(seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0 and < 2\*\*32"):
        ParallelConfig(steps=1, seed=2**32)


def test_an_unknown_device_names_the_choices():
    # torch's own message lists two dozen device types.
    with pytest.raises(ValueError, match="device 'gpu': use 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        train(tiny_model(), tiny_data(), CLIENTS, fedavg(0.1), _config(device="gpu"))


def test_byzantine_clients_beyond_the_partition_are_refused():
    bad = byzantine(3, 40, sign_flip())
    assert max(bad.clients) >= len(CLIENTS)
    with pytest.raises(ValueError, match="byzantine names client"):
        _train(byzantine=bad)


class _Recurrent(nn.Module):
    """A user's sequence classifier on torch's fused recurrent layer."""

    def __init__(self, cell: type[nn.RNNBase], **kw) -> None:
        super().__init__()
        self.rnn = cell(1, 8, batch_first=True, **kw)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x.unsqueeze(-1))[0][:, -1])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_fused_recurrent_layers_are_looped_by_auto_and_refused_by_true(cell):
    # vmap has no batching rule for aten::lstm/gru: the default runtime ("auto", which
    # vectorized every non-convolutional model on a CPU) failed deep inside vmap in round 1.
    torch.manual_seed(0)
    model = _Recurrent(cell)
    looped = _train(model, runtime=SimRuntime(vectorize=False))
    assert torch.equal(_train(model).params, looped.params)
    with pytest.raises(ValueError, match=f"vectorize=True cannot stack .* {cell.__name__}"):
        _train(model, runtime=SimRuntime(vectorize=True))


@pytest.mark.parametrize("vectorize", ["auto", True])
def test_rrelu_in_eval_mode_is_looped(vectorize):
    # aten::rrelu has no vmap rule even in eval mode (a fixed slope): "auto" failed inside vmap.
    model = _with(nn.RReLU(0.1, 0.3)).eval()
    ref = _with(nn.LeakyReLU(0.2))
    if vectorize is True:
        with pytest.raises(ValueError, match="vectorize=True cannot stack .* RReLU"):
            _train(model, runtime=SimRuntime(vectorize=True))
        return
    assert torch.allclose(_train(model).params, _train(ref).params, atol=1e-6)
    dp = [
        train_parallel(
            m,
            tiny_data(),
            CLIENTS,
            sync_sgd(0.1),
            ParallelConfig(steps=2, progress=False),
            SimComm(4),
        ).params
        for m in (_with(nn.RReLU(0.1, 0.3)).eval(), ref)
    ]
    assert torch.allclose(*dp, atol=1e-6)


@pytest.mark.parametrize("vectorize", [False, True])
def test_a_module_registered_twice_is_refused(vectorize):
    # functional_call left plain tensors in its place: the looped runtime failed in round 2
    # ("weight is not an nn.Parameter"), the vectorized one handed back a damaged model.
    torch.manual_seed(0)
    shared = nn.Linear(16, 16)
    model = nn.Sequential(nn.Linear(8, 16), shared, nn.Tanh(), shared, nn.Linear(16, 3))
    with pytest.raises(ValueError, match="model.3 is model.1 again"):
        _train(model, runtime=SimRuntime(vectorize=vectorize))
    assert isinstance(model[1].weight, nn.Parameter)
    # A module without parameters registered twice trains (nothing of it is swapped).
    tanh = nn.Tanh()
    twice = nn.Sequential(nn.Linear(8, 16), tanh, nn.Linear(16, 16), tanh, nn.Linear(16, 3))
    _train(twice, runtime=SimRuntime(vectorize=vectorize))


def test_dropout_between_recurrent_layers_is_refused():
    # nn.LSTM's dropout between its layers draws from torch's global generator, as nn.Dropout
    # does: two runs of one seed ended 0.0017 apart when the global generator's state differed.
    torch.manual_seed(0)
    model = _Recurrent(nn.LSTM, num_layers=2, dropout=0.5)
    with pytest.raises(ValueError, match="model.rnn is a LSTM with dropout 0.5"):
        _train(model)
    _train(model.eval())  # draws no masks in eval mode


class _Attention(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, dropout=dropout, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.view(len(x), 2, 4)
        return self.out(self.attn(seq, seq, seq, need_weights=False)[0].flatten(1))


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # torch's vmap fallback
def test_dropout_on_attention_weights_is_refused():
    # nn.MultiheadAttention(dropout > 0) draws from torch's global generator: the vectorized
    # runtime failed deep inside vmap ("random operations"), the looped one did not repeat.
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="model.attn is a MultiheadAttention with dropout 0.1"):
        _train(_Attention(0.1))
    _train(_Attention(0.0))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(max_chunk=0), "max_chunk must be an integer >= 1"),
        (dict(max_chunk=-1), "max_chunk must be an integer >= 1"),
        (dict(max_chunk=2.5), "max_chunk must be an integer >= 1"),
        (dict(vectorize="yes"), "vectorize must be True, False or 'auto'"),
    ],
)
def test_runtime_settings_are_checked(kw, match):
    # max_chunk=0 failed in round 1 in range(), -1 trained no client and failed in torch.cat.
    with pytest.raises(ValueError, match=match):
        SimRuntime(**kw)
    assert SimRuntime(max_chunk=np.int64(2), vectorize=False).max_chunk == 2


def test_an_empty_test_set_is_refused():
    # Every row's test accuracy was NaN, and summary.json held bare NaN tokens.
    data = tiny_data()
    empty = ArrayDataset(data.test.x[:0], data.test.y[:0], 3)
    with pytest.raises(ValueError, match="the test set is empty"):
        _train(data=FederatedDataset("tiny", data.train, empty))


def test_a_fresh_run_into_a_used_folder_leaves_none_of_the_old_runs_files(tmp_path):
    # A diverging run over an earlier one truncated metrics.jsonl and kept the old summary,
    # model and checkpoint (which resume=True would then have continued).
    train(tiny_model(), tiny_data(), CLIENTS, fedavg(0.1), _config(), out_dir=tmp_path)
    assert {"summary.json", "model.pt", "checkpoint.pt"} <= {p.name for p in tmp_path.iterdir()}

    def stop(row):
        raise KeyboardInterrupt  # the second run stops at its first row

    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_model(), tiny_data(), CLIENTS, fedavg(0.1), _config(), out_dir=tmp_path,
            callback=stop,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_cudnn_is_off_on_a_gpu_only_for_a_recurrent_layer_in_eval_mode():
    # cuDNN's RNN kernels have no backward in eval mode; other models keep cuDNN on a GPU.
    from shoal.functional import rnn_backward_backends

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    frozen, trained = _Recurrent(nn.LSTM).eval(), _Recurrent(nn.GRU)
    frozen_mlp = tiny_model().eval()
    for model, device, cudnn in [
        (frozen, gpu, False),
        (frozen, cpu, True),
        (trained, gpu, True),
        (frozen_mlp, gpu, True),
    ]:
        with rnn_backward_backends(model, device):
            assert torch.backends.cudnn.enabled is cudnn
        assert torch.backends.cudnn.enabled
