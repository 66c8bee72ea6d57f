"""The federated API's arguments, checked before any work in one line naming the argument.

Each case here was accepted and ran wrong (a string flag is true to Python; ``True`` is 1), or
failed later with an AttributeError naming neither the argument nor what it should be, or only
after round 1. Numpy scalars, by contrast, are numbers and flags like Python's.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from shoal import aggregate as ag
from shoal import attacks as at
from shoal.algorithms import LocalWork, fedadam, fedavg, fedsgd
from shoal.algorithms.dgc import dgc
from shoal.cost import CostModel, Heterogeneity, Network, alpha_beta, wifi
from shoal.data import dirichlet
from shoal.runtime.dist import DistRuntime
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model, unequal_clients


def _config(**kw):
    base = {"rounds": 2, "sampler": ClientSampler(3), "progress": False}
    return TrainConfig(**{**base, **kw})


def _train(**kw):
    data = tiny_data()
    config = kw.pop("config", _config())
    return train(tiny_model(), data, unequal_clients(len(data.train), 6), fedavg(0.1), config, **kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"resume": "False", "out_dir": "x"}, "resume must be true or false"),
        ({"callback": "print"}, "callback must be callable"),
        ({"init": torch.full((67,), float("nan"))}, "init has NaN or inf entries"),
        ({"network": wifi()}, "network must be a CostModel"),
        ({"runtime": SimRuntime}, "runtime must be a Runtime"),
        ({"runtime": "sim"}, "runtime must be a Runtime"),
        ({"aggregator": ag.mean}, "aggregator must be an Aggregator"),
        ({"compressor": "top_k"}, "compressor must be a Compressor"),
        ({"byzantine": 3}, "byzantine must be a Byzantine"),
        ({"config": {"rounds": 2}}, "config must be a TrainConfig"),
        ({"out_dir": ""}, "out_dir is empty"),
        # It failed only after round 1 had trained.
        ({"callback": lambda: None}, "callback must take one argument, the metrics row"),
    ],
)
def test_train_refuses_a_wrong_argument_before_any_work(kw, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((TypeError, ValueError), match=match):
        _train(**kw)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: _config(eval_train="False"), "eval_train must be true or false"),
        (lambda: _config(progress="no"), "progress must be true or false"),
        (lambda: _config(device=None), "device must be"),
        (lambda: SimRuntime(fused="False"), "fused must be true or false"),
        (lambda: SimRuntime(memory_budget_mb=float("nan")), "memory_budget_mb must be a finite"),
        (lambda: SimRuntime(memory_budget_mb=True), "memory_budget_mb must be a finite"),
        (lambda: DistRuntime(device="gpu"), "device must be 'auto', 'cpu' or 'cuda'"),
        (lambda: DistRuntime(device="cudafoo"), "device must be 'auto', 'cpu' or 'cuda'"),
        (lambda: DistRuntime(local="loop"), "local must be a SimRuntime"),
        (lambda: DistRuntime(timeout_s=-5), "timeout_s must be a finite number > 0"),
        (lambda: DistRuntime(balance="False"), "balance must be true or false"),
        (lambda: alpha_beta(True, 1e6), "must be a finite number"),
        (lambda: Heterogeneity(straggler_probability=True), "straggler_probability must be"),
        (lambda: Network("n", "up", alpha_beta(0.01, 1e6)), "Network.uplink must be a Link"),
        (lambda: ag.geometric_median(nu=float("inf")), "nu must be a finite number > 0"),
        (lambda: ag.centered_clip(tau=True), "tau must be a number > 0, got True"),
        (lambda: ag.flag_aggregator(tol=None), "tol must be a finite number >= 0"),
        (lambda: ag.bucketing(ag.median, 2), "agg must be an aggregator"),
        (lambda: ag.nnm("x", 1), "agg must be an aggregator"),
        (lambda: ag.bucketing(ag.median(), 2, seed=1.5), "seed must be an integer"),
        (lambda: fedavg(Fraction(1, 10)), "lr must be"),
        (lambda: dgc(0.1, [(3, 3)], batch_size=2.5), "batch_size must be an integer"),
        (lambda: dgc(0.1, [(3, 3)], num_workers=2.5), "num_workers must be an integer"),
        (lambda: dgc(0.1, [(3, 3)], sample_ratio=True), r"sample_ratio must be in \(0, 1\]"),
        (lambda: at.ipm(float("inf")), "ipm: eps must be a finite number > 0"),
        (lambda: at.label_flip(2.5), "label_flip: num_classes must be an integer >= 2"),
        (lambda: at.byzantine(1, 6, "ipm"), "behaviour must be an attack"),
        (lambda: at.byzantine(1, 6, at.ipm), "ipm is a factory: call it, ipm()"),
        (lambda: at.gaussian(1.0, seed=1.5), "gaussian: seed must be an integer"),
    ],
)
def test_a_wrong_value_is_refused_where_it_is_given(build, match):
    with pytest.raises((TypeError, ValueError), match=match):
        build()


def test_numpy_scalars_are_numbers_and_flags():
    # np.bool_ was refused for bias_correction and momentum_masking, np.int64 as a seed.
    fedadam(0.1, 0.01, bias_correction=np.bool_(True))
    dgc(0.1, [(3, 3)], momentum_masking=np.bool_(False), warmup_epochs=0)
    ag.bucketing(ag.median(), 2, seed=np.int64(1))
    ag.centered_clip(tau=np.float32(0.5))
    CostModel(wifi(), seconds_per_sample=np.float32(1e-3))


def test_numpy_seeds_start_a_run():
    # Accepted when built, they failed in train()'s restore of the stream (manual_seed).
    _train(aggregator=ag.bucketing(ag.median(), 2, seed=np.int64(1)))
    noise = at.byzantine(1, 6, at.gaussian(1.0, seed=np.int64(3)))
    _train(aggregator=ag.median(), byzantine=noise)


def test_a_resume_with_numpy_scalars_equal_to_the_saved_ones_is_the_same_setup(tmp_path):
    # np.int64(2) against 2 compared as reprs: a warning, and the aggregator's saved state
    # (bucketing's stream) dropped, so the resumed run went 0.026 away from the straight one.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 6)

    def run(rounds, agg, **kw):
        cfg = _config(rounds=rounds)
        return train(tiny_model(), data, clients, fedavg(0.1), cfg, aggregator=agg, **kw)

    straight = run(4, ag.bucketing(ag.median(), s=2))
    run(2, ag.bucketing(ag.median(), s=2), out_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = run(4, ag.bucketing(ag.median(), s=np.int64(2)), out_dir=tmp_path, resume=True)
    assert torch.equal(resumed.params, straight.params)


def test_an_algorithm_that_fixes_its_work_warns_only_when_work_was_chosen():
    # fedsgd warned that "the configured LocalWork(...) is ignored" with the default work.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = tiny_data()
        train(tiny_model(), data, unequal_clients(len(data.train), 6), fedsgd(0.1), _config())
    with pytest.warns(UserWarning, match="is ignored"):
        data = tiny_data()
        cfg = _config(work=LocalWork(epochs=2))
        train(tiny_model(), data, unequal_clients(len(data.train), 6), fedsgd(0.1), cfg)


@pytest.mark.parametrize(
    ("clients", "match"),
    [
        (np.arange(40), r"one array of shape \(40,\)"),  # one flat array: len() of unsized
        ({0: np.arange(5), 1: np.arange(5, 9)}, "got a dict; pass list"),
        (dirichlet(0.5), r"got Dirichlet \(call it: partition"),  # the partitioner itself
        (None, "got NoneType"),
        ([np.arange(5), 3], r"client 1 must be a 1-D integer index array, got shape \(\)"),
        ([list(range(5)), []], "client 1 has no samples"),  # [] is float64 to numpy
    ],
)
def test_clients_that_are_not_index_arrays_are_refused_in_one_line(clients, match):
    data = tiny_data()
    with pytest.raises((TypeError, ValueError), match=match):
        train(tiny_model(), data, clients, fedavg(0.1), _config())


def test_a_client_holding_a_sample_twice_warns():
    data = tiny_data()
    clients = [np.arange(10), np.array([10, 11, 11, 12]), np.arange(20, 30)]
    with pytest.warns(UserWarning, match=r"1 client\(s\) \(the first: client 1\) hold a sample"):
        train(tiny_model(), data, clients, fedavg(0.1), _config())


def test_an_init_that_requires_grad_is_detached():
    # It carried an autograd graph through every round (7.5 GB after 200 FedAdam rounds).
    model = tiny_model()
    init = torch.nn.utils.parameters_to_vector(model.parameters())
    assert init.requires_grad
    result = _train(init=init, config=_config(rounds=3))
    assert not result.params.requires_grad and result.params.grad_fn is None
    assert torch.equal(result.params, _train(init=init.detach(), config=_config(rounds=3)).params)


def test_a_resume_of_a_missing_run_makes_no_folder(tmp_path):
    with pytest.raises(ValueError, match="cannot resume: no checkpoint.pt"):
        _train(out_dir=tmp_path / "typo", resume=True)
    assert not (tmp_path / "typo").exists()


def test_clients_in_an_object_array_train_as_a_list_does():
    data = tiny_data()
    parts = unequal_clients(len(data.train), 6)
    ragged = np.empty(len(parts), dtype=object)
    ragged[:] = parts
    as_list = train(tiny_model(), data, parts, fedavg(0.1), _config())
    assert torch.equal(
        train(tiny_model(), data, ragged, fedavg(0.1), _config()).params, as_list.params
    )
