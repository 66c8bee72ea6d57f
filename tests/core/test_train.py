import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from shoal.aggregate import bucketing, centered_clip, median, nnm, stateful
from shoal.aggregate.mean import Mean
from shoal.algorithms.base import LocalWork
from shoal.algorithms.fedavg import fedavg
from shoal.algorithms.fedopt import fedadam, fedavgm
from shoal.algorithms.scaffold import scaffold
from shoal.attacks import byzantine, gaussian, label_flip, sign_flip
from shoal.compress import error_feedback, qsgd, top_k
from shoal.cost import CostModel, Heterogeneity, cellular_4g
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler, Stragglers
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model, unequal_clients


def _config(**kw):
    base = dict(
        rounds=6, sampler=ClientSampler(4), work=LocalWork(epochs=2, batch_size=8), progress=False
    )
    base.update(kw)
    return TrainConfig(**base)


def _run(runtime=None, aggregator=None, **kw):
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    return train(
        tiny_model(),
        data,
        clients,
        fedavg(0.2),
        _config(**kw),
        runtime=runtime,
        aggregator=aggregator,
    )


def test_learns_and_logs_required_keys():
    res = _run(rounds=15)
    keys = {
        "round",
        "test_accuracy",
        "test_loss",
        "train_loss",
        "uplink_bytes",
        "downlink_bytes",
        "wall_seconds",
    }
    assert keys <= set(res.metrics[0])
    assert res.metrics[-1]["test_accuracy"] > 0.8 > res.metrics[0]["test_accuracy"] - 0.3
    # 4 clients x (float32 model + the wire framing: count, name, dtype, ndim, one dim).
    d = res.spec.num_params * 4 + 2 + (1 + len("values") + 1 + 1 + 4)
    assert res.metrics[0]["uplink_bytes"] == 4 * d == res.metrics[0]["downlink_bytes"]
    assert "median" in res.summary["client_train_accuracy"]


class _ChunkSpy(SimRuntime):
    """SimRuntime that records the chunk sizes it chooses."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.chunks = []

    def chunk_size(self, task, batch):
        self.chunks.append(super().chunk_size(task, batch))
        return self.chunks[-1]


def test_chunked_vectorized_equals_one_chunk_and_loop():
    one = _run(runtime=SimRuntime(vectorize=True)).params
    spy = _ChunkSpy(vectorize=True, memory_budget_mb=0.02)
    chunked = _run(runtime=spy).params
    loop = _run(runtime=SimRuntime(vectorize=False)).params
    assert 1 <= max(spy.chunks) < 4  # the budget splits a round's 4 clients into chunks
    torch.testing.assert_close(one, chunked, atol=1e-6, rtol=0)
    torch.testing.assert_close(one, loop, atol=1e-5, rtol=0)


def test_a_budget_below_one_clients_working_set_is_warned_of_once():
    # Chunks of one client went over the budget without a word.
    with pytest.warns(UserWarning, match=r"working set is about .* above memory_budget_mb") as seen:
        _run(runtime=SimRuntime(vectorize=True, memory_budget_mb=0.001))
    assert sum("memory_budget_mb" in str(w.message) for w in seen) == 1  # not every round
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(runtime=SimRuntime(vectorize=True))


def test_full_inbox_path_equals_streaming_mean():
    """A non-linear aggregator sees the whole inbox; for the mean both paths must agree."""
    streamed = _run().params
    full = _run(aggregator=Mean(linear=False)).params
    torch.testing.assert_close(streamed, full, atol=1e-6, rtol=0)


# Simulated time (heterogeneous speeds and bandwidths, stragglers) and the downlink's copy
# (compressed against what the clients hold) live in the checkpoint too.
NETWORK = CostModel(cellular_4g(), 1e-3, Heterogeneity(0.5, 0.5, straggler_probability=0.3, seed=1))
WITH_COST = {"network": NETWORK, "downlink_compressor": top_k(ratio=0.3)}


@pytest.mark.parametrize("extra", [{}, WITH_COST], ids=["plain", "network_downlink"])
def test_resume_after_crash_equals_uninterrupted(tmp_path, extra):
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    ref = train(
        tiny_model(), data, clients, fedavg(0.2), _config(), out_dir=tmp_path / "a", **extra
    )

    def crash(row):
        if row["round"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_model(),
            data,
            clients,
            fedavg(0.2),
            _config(),
            out_dir=tmp_path / "b",
            callback=crash,
            **extra,
        )
    # A different initial model proves the state really comes from the checkpoint.
    res = train(
        tiny_model(seed=1),
        data,
        clients,
        fedavg(0.2),
        _config(),
        out_dir=tmp_path / "b",
        resume=True,
        **extra,
    )
    assert torch.equal(ref.params, res.params)
    assert ("sim_seconds" in ref.metrics[-1]) == bool(extra)
    # The summary has the run's simulated time too (a data-parallel one's had it already).
    assert res.summary.get("sim_seconds") == ref.metrics[-1].get("sim_seconds")
    assert ("sim_seconds" in res.summary) == bool(extra)
    rows = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 6
    for a, b in zip(ref.metrics, rows):
        a, b = dict(a), dict(b)
        a.pop("wall_seconds"), b.pop("wall_seconds")
        assert a == b


def test_divergence_is_reported():
    data = tiny_data()
    data.train.x[0, 0] = float("nan")
    clients = [np.arange(0, 120), np.arange(120, 240)]
    with pytest.raises(FloatingPointError, match="NaN"):
        train(tiny_model(), data, clients, fedavg(0.1), _config(sampler=ClientSampler(2), rounds=2))


def test_empty_client_is_rejected():
    data = tiny_data()
    with pytest.raises(ValueError, match="client 1 has no samples"):
        train(
            tiny_model(),
            data,
            [np.arange(10), np.array([], dtype=np.int64)],
            fedavg(0.1),
            _config(sampler=ClientSampler(1)),
        )


# Objects that carry state from round to round: centered clipping's last aggregate (also
# behind NNM, which once neither saved nor reset it), a seeded attack's and bucketing's random
# streams.
CARRIED = {
    "centered_clip": lambda: {"aggregator": stateful(centered_clip(tau=0.05))},
    "gaussian_attack": lambda: {
        "aggregator": median(),
        "byzantine": byzantine(2, 10, gaussian(0.1, seed=3)),
    },
    "bucketing": lambda: {"aggregator": bucketing(median(), s=2, seed=1)},
    "nnm_centered_clip": lambda: {"aggregator": nnm(stateful(centered_clip(tau=0.05)), 1)},
}


@pytest.mark.parametrize("name", CARRIED)
def test_carried_state_resumes_and_each_run_starts_afresh(tmp_path, name):
    # A resumed run must continue the state (it restarted from init, 0.02-0.1 off), and a run
    # must not inherit an earlier run's when the same object is passed again.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)

    def run(extra, rounds=6, **kw):
        cfg = _config(rounds=rounds)
        return train(tiny_model(), data, clients, fedavg(0.2), cfg, **extra, **kw)

    reused = CARRIED[name]()
    straight = run(reused)
    assert torch.equal(straight.params, run(reused).params)  # the second run started afresh
    plain = run({"aggregator": Mean(False)})
    assert not torch.allclose(straight.params, plain.params, atol=1e-3)  # the state matters

    run(CARRIED[name](), rounds=3, out_dir=tmp_path / "b")
    resumed = train(
        tiny_model(), data, clients, fedavg(0.2), _config(), resume=True,
        out_dir=tmp_path / "b", **CARRIED[name](),
    )  # fmt: skip
    assert torch.equal(straight.params, resumed.params)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("bucketing", "centered_clip"),
        ("centered_clip", "bucketing"),
        ("gaussian_attack", "gaussian_other_seed"),
    ],
)
def test_a_resume_with_another_aggregator_or_attack_warns_and_starts_it_afresh(
    tmp_path, before, after
):
    # The new object loaded the old one's saved state: a KeyError from inside it, or (an attack
    # of another seed) silently the old one's stream.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    setups = {
        **CARRIED,
        "gaussian_other_seed": lambda: {
            "aggregator": median(),
            "byzantine": byzantine(2, 10, gaussian(0.1, seed=4)),
        },
    }

    def resume(out):
        return train(
            tiny_model(), data, clients, fedavg(0.2), _config(rounds=5), resume=True,
            out_dir=out, **setups[after](),
        )  # fmt: skip

    cfg = _config(rounds=3)
    train(tiny_model(), data, clients, fedavg(0.2), cfg, out_dir=tmp_path / "a", **setups[before]())
    # The reference: the same checkpoint with no carried state saved at all.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    ck["carried"] = {}
    torch.save(ck, tmp_path / "b" / "checkpoint.pt")
    with pytest.warns(UserWarning, match=r"\((aggregator|attack) differ\).*start\(s\) afresh"):
        resumed = resume(tmp_path / "a")
    with pytest.warns(UserWarning, match="differ"):
        reference = resume(tmp_path / "b")
    assert torch.equal(resumed.params, reference.params)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (lambda: fedadam(0.2, 0.05), lambda: fedavgm(0.2)),  # Adam's m went on as momentum
        (lambda: fedavg(0.2), lambda: scaffold(0.2)),  # KeyError 'c' after round 4's training
        (lambda: scaffold(0.2), lambda: fedadam(0.2, 0.05)),  # the clients' c are dropped too
    ],
)
def test_a_resume_with_another_algorithm_starts_its_state_afresh(tmp_path, before, after):
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)

    def fit(alg, out, rounds):
        return train(
            tiny_model(), data, clients, alg, _config(rounds=rounds), out_dir=out,
            resume=rounds > 3,
        )  # fmt: skip

    fit(before(), tmp_path / "a", 3)
    # The reference: the same checkpoint with the new algorithm's fresh states in it.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    ck["server"], ck["clients"] = after().server_init(ck["params"]), {}
    ck["setup"]["algorithm class"] = type(after()).__qualname__
    torch.save(ck, tmp_path / "b" / "checkpoint.pt")
    with pytest.warns(UserWarning, match="algorithm's server and client states start"):
        resumed = fit(after(), tmp_path / "a", 5)
    with pytest.warns(UserWarning, match=r"\(algorithm differ\)"):
        reference = fit(after(), tmp_path / "b", 5)
    assert torch.equal(resumed.params, reference.params)


@pytest.mark.parametrize(
    ("key", "before", "after", "saved"),
    [
        ("compressor", top_k(k=4), error_feedback(top_k(k=4)), "compressor"),
        ("downlink", top_k(k=4), qsgd(64, bucket_size=None), "downlink"),
        ("compressor", qsgd(4, seed=1), qsgd(4, seed=2), "compressor"),
    ],
)
def test_a_resume_with_another_compressor_warns_and_starts_its_state_afresh(
    tmp_path, key, before, after, saved
):
    """The old compressor's per-client or broadcast state went to the new one: "state must
    come from error_feedback(c).init" in the first round, or another seed's went on silently."""
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    arg = "compressor" if key == "compressor" else "downlink_compressor"

    def run(rounds, out, compressor, resume):
        cfg = _config(rounds=rounds)
        kw = {arg: compressor, "out_dir": out, "resume": resume}
        return train(tiny_model(), data, clients, fedavg(0.2), cfg, **kw)

    run(3, tmp_path / "a", before, False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    ck[saved] = {}  # the reference: a checkpoint without that state
    torch.save(ck, tmp_path / "b" / "checkpoint.pt")
    with pytest.warns(UserWarning, match=rf"\({key} differ\).*start\(s\) afresh"):
        resumed = run(5, tmp_path / "a", after, True)
    with pytest.warns(UserWarning, match="differ"):
        reference = run(5, tmp_path / "b", after, True)
    assert torch.equal(resumed.params, reference.params)


class _EachKeyInTurn:
    """The reference for a stateful rule under an algorithm of two message keys: the runtime
    aggregates the keys in one order every round, so call parity tells them apart here."""

    linear = False

    def __init__(self, cc):
        self.cc, self.centers, self.calls = cc, [None, None], 0

    def __call__(self, inbox_ND, weights_N):
        k, self.calls = self.calls % 2, self.calls + 1
        self.centers[k] = self.cc(inbox_ND, weights_N, self.centers[k])
        return self.centers[k]


@pytest.mark.parametrize("algorithm", ["scaffold", "fednova"])
def test_a_stateful_rule_keeps_one_state_per_message_key(algorithm):
    # SCAFFOLD's delta and delta_c (one shape) shared one clipping center, silently; FedNova's
    # normalized_delta and tau (two shapes) were refused with advice train could not take.
    from shoal.algorithms import fednova, scaffold

    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    make = {"scaffold": lambda: scaffold(0.2), "fednova": lambda: fednova(0.2)}[algorithm]

    def run(aggregator):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SCAFFOLD's delta_c under a robust rule
            cfg = _config(rounds=3)
            return train(tiny_model(), data, clients, make(), cfg, aggregator=aggregator)

    got = run(stateful(centered_clip(tau=0.05)))
    want = run(_EachKeyInTurn(centered_clip(tau=0.05)))
    assert torch.equal(got.params, want.params)


def test_stragglers_with_nothing_less_to_do_are_warned_of():
    # FedProx's stragglers run randint(1, E) epochs: with E = 1 the setting changed nothing,
    # silently (the CLI's sampling.straggler_fraction at the default client.epochs = 1).
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    one_epoch = LocalWork(epochs=1, batch_size=8)
    with pytest.warns(UserWarning, match="with E = 1 there is nothing less to do"):
        train(
            tiny_model(), data, clients, fedavg(0.2),
            _config(rounds=1, work=one_epoch, stragglers=Stragglers(0.9)),
        )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for work, drop in [(LocalWork(epochs=2, batch_size=8), False), (one_epoch, True)]:
            train(
                tiny_model(), data, clients, fedavg(0.2),
                _config(rounds=1, work=work, stragglers=Stragglers(0.5, drop=drop)),
            )  # fmt: skip


def test_a_straggler_fraction_that_rounds_to_no_straggler_is_warned_of(tmp_path):
    # round(m (1 - f)) = m: 0.3 of 1 client a round (or 0.04 of 10) never made one straggle.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    work = LocalWork(epochs=2, batch_size=8)
    cfg = _config(rounds=1, sampler=ClientSampler(1), work=work, stragglers=Stragglers(0.3))
    with pytest.warns(UserWarning, match=r"round\(1 x \(1 - 0.3\)\) = 1 keep the full work"):
        train(tiny_model(), data, clients, fedavg(0.2), cfg)


def test_a_resume_with_other_stragglers_or_weighting_warns(tmp_path):
    # Neither was in the checkpoint's setup: the resumed run changed them without a word.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    work = LocalWork(epochs=2, batch_size=8)
    train(tiny_model(), data, clients, fedavg(0.2), _config(rounds=2, work=work), out_dir=tmp_path)
    other = _config(rounds=3, work=work, stragglers=Stragglers(0.5), weighting="uniform")
    with pytest.warns(UserWarning, match=r"\(stragglers, weighting differ\)"):
        train(tiny_model(), data, clients, fedavg(0.2), other, out_dir=tmp_path, resume=True)


def test_a_rule_short_of_inputs_says_in_which_round_and_how_many_arrived():
    # "krum needs n >= 2f+3, got n=2, f=1" named neither the round nor that dropped stragglers
    # had shrunk the inbox.
    from shoal.aggregate import krum

    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    cfg = _config(rounds=2, sampler=ClientSampler(5), stragglers=Stragglers(0.6, drop=True))
    with pytest.raises(ValueError, match=r"^round 1: 2 message\(s\) reached .*krum needs"):
        train(tiny_model(), data, clients, fedavg(0.2), cfg, aggregator=krum(1))


def test_a_round_of_only_byzantine_clients_is_warned_of():
    # The attack crafts from honest updates: with none in the round, the Byzantine clients'
    # honest updates went through, and the run looked more robust than it was, silently.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    with pytest.warns(UserWarning, match="every client sampled this round is Byzantine"):
        train(
            tiny_model(), data, clients, fedavg(0.2), _config(sampler=ClientSampler(1)),
            aggregator=median(), byzantine=byzantine(5, 10, sign_flip()),
        )  # fmt: skip


def test_alie_survives_a_round_with_a_byzantine_majority():
    # 3 Byzantine of 10 clients, 5 sampled a round: round 3 draws all 3 with 2 honest, where
    # ALIE's z_max is undefined, and the run stopped with a ValueError mid-way.
    from shoal.attacks import alie

    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    with pytest.warns(UserWarning, match="undefined for n=5, f=3"):
        result = train(
            tiny_model(), data, clients, fedavg(0.2),
            _config(rounds=6, sampler=ClientSampler(5), work=LocalWork(epochs=1, batch_size=8)),
            aggregator=median(), byzantine=byzantine(3, 10, alie(), seed=4),
        )  # fmt: skip
    assert len(result.metrics) == 6


def test_the_global_train_accuracy_is_scored_on_the_true_labels():
    # Label-flipping clients train on poisoned labels; the model's train accuracy was scored
    # against them too (0.600 where the true labels gave 0.579).
    from shoal.attacks import label_flip
    from shoal.evaluate import predict
    from shoal.functional import cross_entropy

    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    res = train(
        tiny_model(), data, clients, fedavg(0.2), _config(rounds=2, eval_train=True),
        byzantine=byzantine(4, 10, label_flip(3)),
    )  # fmt: skip
    _, correct = predict(
        tiny_model(), res.spec, res.params, data.train.x, data.train.y, cross_entropy
    )
    assert res.metrics[-1]["global_train_accuracy"] == pytest.approx(float(correct.double().mean()))


def test_resume_without_a_folder_is_refused():
    # It trained from scratch without a word (train_parallel refused already).
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    with pytest.raises(ValueError, match="resume=True needs the out_dir"):
        train(tiny_model(), data, clients, fedavg(0.2), _config(rounds=1), resume=True)


def test_a_resume_is_checked_against_the_checkpoints_setup(tmp_path):
    # Fewer rounds than the checkpoint returned that run unchanged, silently; another algorithm
    # or other clients went on from its state without a word.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)

    def fit(rounds, alg, parts=clients, model=None):
        return train(
            model or tiny_model(), data, parts, alg, _config(rounds=rounds),
            out_dir=tmp_path, resume=rounds != 3,
        )  # fmt: skip

    fit(3, fedavg(0.2))
    with pytest.raises(ValueError, match="at round 3, past rounds=2; a resumed run can only"):
        fit(2, fedavg(0.2))
    with pytest.raises(ValueError, match="holds a model of .* parameters, this one has"):
        fit(4, fedavg(0.2), model=torch.nn.Linear(8, 3))
    others = unequal_clients(len(data.train), 10, seed=1)
    with pytest.warns(UserWarning, match=r"'s \(client sizes, client split, algorithm differ\)"):
        fit(4, fedavg(0.1), parts=others)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(5, fedavg(0.1), parts=others)  # as the checkpoint of round 4 was made
    # Another split of the same sizes (a reseeded IID partition) went on silently.
    pool = np.random.default_rng(1).permutation(np.concatenate(others))
    shuffled = np.split(pool, np.cumsum([len(p) for p in others])[:-1])
    assert [len(p) for p in shuffled] == [len(p) for p in others]
    with pytest.warns(UserWarning, match=r"'s \(client split differ\)"):
        fit(6, fedavg(0.1), parts=shuffled)


def test_a_resume_with_other_frozen_weights_or_buffers_warns(tmp_path):
    # A checkpoint holds the trainable parameters only: a resume whose model brought another
    # frozen layer (say, other pretrained weights) went on without a word.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)

    def model(frozen_seed):
        torch.manual_seed(frozen_seed)
        frozen = torch.nn.Linear(8, 8).requires_grad_(False)
        return torch.nn.Sequential(frozen, tiny_model())

    def fit(rounds, frozen_seed):
        return train(
            model(frozen_seed), data, clients, fedavg(0.2), _config(rounds=rounds),
            out_dir=tmp_path, resume=rounds > 2,
        )  # fmt: skip

    fit(2, frozen_seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(3, frozen_seed=0)  # the same frozen layer: nothing to say
    with pytest.warns(UserWarning, match=r"\(buffers and frozen parameters differ\)"):
        fit(4, frozen_seed=1)


def test_the_chunk_size_follows_the_input_shape_a_model_sees():
    # The activation count was cached per id(model): a model that takes inputs of two sizes
    # (or a new model given a collected one's id) kept the first count, and its budget.
    from types import SimpleNamespace

    from shoal.functional import ParamSpec

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    params_D = torch.cat([p.detach().flatten() for p in model.parameters()])

    def chunk(runtime, side):
        task = SimpleNamespace(
            model=model,
            x=torch.zeros(2, 1, side, side),
            params_D=params_D,
            algorithm=fedavg(0.1),
            spec=ParamSpec.of(model),
        )
        return runtime.chunk_size(task, batch=8)

    runtime = SimRuntime(memory_budget_mb=1.0, max_chunk=None)
    small, large = chunk(runtime, 4), chunk(runtime, 32)
    fresh = SimRuntime(memory_budget_mb=1.0, max_chunk=None)
    assert large == chunk(fresh, 32) < small  # 64x the activations: a smaller chunk


def _unfreeze(model: torch.nn.Module) -> None:
    model[0].requires_grad_(True)


def _swap(model: torch.nn.Module) -> None:  # another layer of the same size frozen instead
    model[0].requires_grad_(True)
    model[2].requires_grad_(False)


def _new_frozen_weight(model: torch.nn.Module) -> None:  # say, pretrained weights put in
    model[0].weight = torch.nn.Parameter(torch.randn(8, 8), requires_grad=False)


@pytest.mark.parametrize("change", [_unfreeze, _swap, _new_frozen_weight])
def test_a_runtime_reused_after_the_model_changed_trains_the_new_model(change):
    """The looped runtime caches a work copy of the model: a second run with the same runtime,
    after the model's frozen parameters changed, trained the first run's (a size mismatch when
    unfreezing, silently wrong after a swap or a frozen weight assigned anew)."""
    data, lr = tiny_data(), 0.1
    runtime = SimRuntime(vectorize=False, fused=False)
    config = _config(rounds=1, sampler=ClientSampler(1), work=LocalWork(batch_size=240))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh()
    )
    model.append(torch.nn.Linear(8, 3))
    model[0].requires_grad_(False)
    train(model, data, [np.arange(240)], fedavg(lr), config, runtime=runtime)
    change(model)
    got = train(model, data, [np.arange(240)], fedavg(lr), config, runtime=runtime)
    # One client holding every row, one full-batch step: one step of torch.optim.SGD.
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    dev = got.params.device  # train moved the model to config.device
    torch.nn.functional.cross_entropy(model(data.train.x.to(dev)), data.train.y.to(dev)).backward()
    opt.step()
    torch.testing.assert_close(got.params, got.spec.flatten(model), rtol=0, atol=1e-6)


def test_a_saving_run_leaves_the_model_as_it_was_and_saves_the_trained_one(tmp_path):
    # With out_dir, the final parameters were loaded into the caller's model (to save it);
    # without, they were not: whether a model came back trained depended on saving.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
    model.append(torch.nn.Linear(8, 3))
    model[2].weight = model[0].weight  # tied: both state-dict keys must hold the trained one
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = tiny_data()
    res = train(model, data, unequal_clients(len(data.train), 10), fedavg(0.2), _config(),
                out_dir=tmp_path)  # fmt: skip
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), before[k]), k
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved.keys() == before.keys()
    trained = res.spec.unflatten(res.params)
    for k in trained:
        assert torch.equal(saved[k], trained[k].cpu()), k
    assert torch.equal(saved["2.weight"], trained["0.weight"].cpu())
    assert not torch.equal(saved["0.weight"], before["0.weight"])


class _Annotated(torch.nn.Sequential):
    """A model whose state_dict holds more than its tensors: an extra state that is not a
    tensor, and a hook that saves the last layer's weight as a copy in half precision."""

    def get_extra_state(self):
        return {"vocabulary": ["a", "b"]}

    def set_extra_state(self, state):
        self.vocabulary = state["vocabulary"]


def _half_weight(module, state, prefix, local_metadata):
    state[prefix + "2.weight"] = state[prefix + "2.weight"].half()


def test_model_pt_is_what_the_models_own_state_dict_gives(tmp_path):
    # model.pt matched state_dict(keep_vars=True)'s values to the parameters by identity: an
    # extra state that is not a tensor failed the run at its end (no .detach()), and a value
    # a hook made from a parameter was saved untrained, silently.
    torch.manual_seed(0)
    model = _Annotated(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model._register_state_dict_hook(_half_weight)
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    data = tiny_data()
    res = train(model, data, unequal_clients(len(data.train), 10), fedavg(0.2), _config(),
                out_dir=tmp_path)  # fmt: skip
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["_extra_state"] == {"vocabulary": ["a", "b"]}
    trained = res.spec.unflatten(res.params)
    assert torch.equal(saved["2.weight"], trained["2.weight"].half().cpu())
    assert torch.equal(saved["0.weight"], trained["0.weight"].cpu())
    for k, v in model.state_dict().items():  # the model itself is left as it was
        assert not isinstance(v, torch.Tensor) or torch.equal(v.cpu(), before[k]), k


def test_client_test_accuracy_only_for_the_natural_users():
    """The users' test samples are scored as the clients' own only when the clients are the
    users: with as many clients from another partition, the summary gave the users' test
    accuracies as the clients'."""
    from shoal.data import shards, synthetic
    from shoal.models import mclr

    data = synthetic(0.5, 0.5, num_users=3, seed=0)
    cfg = _config(rounds=2, sampler=ClientSampler(3))
    users = data.natural_clients
    # The users' own samples, listed in another order, are still the users.
    res = train(mclr(60, 10), data, [u[::-1] for u in users], fedavg(0.05), cfg)
    model = mclr(60, 10)
    res.spec.load_into(model, res.params)
    with torch.no_grad():
        correct = (model(data.test.x).argmax(1) == data.test.y).numpy()
    by_hand = [correct[idx].mean() for idx in data.natural_test_clients]
    got = res.summary["client_test_accuracy"]
    assert got["mean"] == pytest.approx(np.mean(by_hand))
    assert got["min"] == pytest.approx(min(by_hand))

    other = shards(1)(data.train.y.numpy(), 3, np.random.default_rng(0))
    res = train(mclr(60, 10), data, other, fedavg(0.05), cfg)
    assert "client_test_accuracy" not in res.summary
    assert "client_train_accuracy" in res.summary


def test_label_flip_must_match_the_datas_classes():
    # label_flip(10) of 3-class labels: 9 - y fell outside the classes inside round 1's loss.
    data = tiny_data()
    flip = byzantine(1, 10, label_flip(10))
    clients = unequal_clients(len(data.train), 10)
    with pytest.raises(ValueError, match=r"label_flip\(10\) .* the data has 3 classes"):
        train(tiny_model(), data, clients, fedavg(0.2), _config(rounds=1), byzantine=flip)


def test_config_objects_and_init_are_type_checked():
    # sampler=3 failed in round 0 with "'int' object has no attribute 'check'", a numpy init
    # with "'numpy.ndarray' object has no attribute 'to'".
    with pytest.raises(TypeError, match="sampler must be a ClientSampler .*, got int"):
        TrainConfig(rounds=1, sampler=3)
    with pytest.raises(TypeError, match="work must be a LocalWork, got dict"):
        TrainConfig(rounds=1, sampler=ClientSampler(2), work={"epochs": 1})
    with pytest.raises(TypeError, match="stragglers must be a Stragglers, got float"):
        TrainConfig(rounds=1, sampler=ClientSampler(2), stragglers=0.5)
    # Every sampled client a dropped straggler: no one trained in any round, without an error.
    with pytest.raises(ValueError, match="leaves none that is not dropped"):
        TrainConfig(rounds=1, sampler=ClientSampler(5), stragglers=Stragglers(0.9, drop=True))
    TrainConfig(rounds=1, sampler=ClientSampler(5), stragglers=Stragglers(0.9))  # slowed only
    with pytest.raises(ValueError, match="steps=3 replaces epochs, so epochs=2 would be ignored"):
        LocalWork(epochs=2, steps=3)
    model = tiny_model()
    init = np.zeros(sum(p.numel() for p in model.parameters()), np.float32)
    with pytest.raises(TypeError, match="init must be a Tensor of the flat parameters"):
        train(model, tiny_data(), unequal_clients(60, 4), fedavg(0.1), _config(), init=init)


def test_a_checkpoint_without_the_algorithm_class_takes_it_from_the_repr(tmp_path):
    # Checkpoints written before the class was recorded: SCAFFOLD after FedAvg still failed
    # with KeyError 'c'.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    train(tiny_model(), data, clients, fedavg(0.2), _config(rounds=2), out_dir=tmp_path)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del ck["setup"]["algorithm class"]
    torch.save(ck, tmp_path / "checkpoint.pt")
    with pytest.warns(UserWarning, match="algorithm's server and client states start"):
        train(
            tiny_model(), data, clients, scaffold(0.2), _config(rounds=3), out_dir=tmp_path,
            resume=True,
        )  # fmt: skip


def test_a_nan_in_an_error_feedback_residual_stops_the_run_naming_the_round():
    """NaN features under error_feedback(bf16): the residual kept the NaN for every later
    upload; the run now stops in the round where a client's compressor saw it."""
    from shoal.compress import bf16

    data = tiny_data()
    data.train.x[:, 0] = float("nan")
    cfg = TrainConfig(rounds=3, sampler=ClientSampler(4), progress=False)
    clients = unequal_clients(len(data.train), 10)
    with pytest.raises(FloatingPointError, match=r"^round 1: error_feedback\(bf16\): the resid"):
        train(tiny_model(), data, clients, fedavg(0.1), cfg, compressor=error_feedback(bf16()))
