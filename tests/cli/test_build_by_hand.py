"""What :func:`shoal.cli.build.build` makes of a config: every object
compared with the one built by hand through the Python API, so that no key is dropped,
swapped or read from the wrong place."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import SMALL

from shoal import algorithms, compress, models
from shoal.algorithms.base import LocalWork
from shoal.cli.build import build, build_clients, build_network, load_data
from shoal.cli.registry import CATALOG
from shoal.config import Config, ConfigError, loads, resolve
from shoal.cost import MBIT_S, CostModel, Heterogeneity, Network, alpha_beta
from shoal.data import (
    classes_per_client,
    dirichlet,
    feature_noise,
    hsu_dirichlet,
    iid,
    load_digits,
    quantity_skew,
    shards,
    synthetic,
)
from shoal.functional import init_params
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler, Stragglers
from shoal.train import TrainConfig

SEED = 3  # cli_helpers.SMALL's
DIGITS = {"test_fraction": 0.2, "seed": SEED}


def setup_rng(seed: int, stream: int) -> np.random.Generator:
    """The setup streams' keys as published runs drew them (partition 0, feature noise 1)."""
    return np.random.default_rng([seed, 2**31 + stream])


def _config(top: dict[str, Any] | None = None, **tables: dict[str, Any]) -> Config:
    """cli_helpers.SMALL (digits, 20 clients, mlp [32], seed 3) with ``top`` and ``tables``
    merged in."""
    raw = {**loads(SMALL.format(rounds=3, epochs=1)), **(top or {})}
    for name, table in tables.items():
        raw[name] = {**raw.get(name, {}), **table}
    return resolve(raw, CATALOG)


def _same_clients(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("options", "by_hand"),
    [
        ({"scheme": "dirichlet", "alpha": 0.2, "min_size": 20}, dirichlet(0.2, 20)),
        ({"scheme": "quantity", "beta": 1.0, "min_size": 20}, quantity_skew(1.0, 20)),
        (
            {"scheme": "hsu_dirichlet", "alpha": 0.5, "samples_per_client": 40},
            hsu_dirichlet(0.5, 40),
        ),
        ({"scheme": "shards", "shards_per_client": 3}, shards(3)),
        ({"scheme": "classes", "classes_per_client": 3}, classes_per_client(3)),
        ({"scheme": "iid"}, iid()),
    ],
    ids=lambda v: v.get("scheme") if isinstance(v, dict) else "",
)
def test_the_partition_is_the_librarys_with_the_configs_options_and_seed(
    options: dict, by_hand: Any
) -> None:
    raw = loads(SMALL.format(rounds=1, epochs=1))
    cfg = resolve({**raw, "partition": {"num_clients": 20, **options}}, CATALOG)
    _, data, clients = build_clients(cfg)
    labels = load_digits(**DIGITS).train.y.numpy()
    _same_clients(clients, by_hand(labels, 20, setup_rng(SEED, 0)))
    if "min_size" in options:
        assert min(len(c) for c in clients) >= options["min_size"]


def test_a_partition_that_leaves_a_class_to_no_client_warns() -> None:
    """5 clients with 2 classes each left classes of digits unheld in nearly every seed, and
    the run said nothing while the test set scored them."""
    raw = loads(SMALL.format(rounds=1, epochs=1))
    part = {"num_clients": 5, "scheme": "classes", "classes_per_client": 2}
    cfg = resolve({**raw, "partition": part}, CATALOG)
    with pytest.warns(UserWarning, match=r'"classes": no client holds class(es)? \d') as caught:
        _, data, clients = build_clients(cfg, check_sampling=False)
    held = np.unique(data.train.y.numpy()[np.concatenate(clients)])
    unused = len(data.train) - sum(len(c) for c in clients)
    assert len(held) < 10 and f"({unused} of {len(data.train)} training samples" in str(
        caught[0].message
    )
    cfg = resolve({**raw, "partition": {**part, "num_clients": 20}}, CATALOG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_clients(cfg)  # every class held: quiet


def test_the_partition_follows_the_seed() -> None:
    a = build_clients(_config(top={"seed": 5}))[2]
    b = build_clients(_config(top={"seed": 5}))[2]
    c = build_clients(_config(top={"seed": 6}))[2]
    _same_clients(a, b)
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, c, strict=True))
    labels = load_digits(test_fraction=0.2, seed=5).train.y.numpy()
    _same_clients(a, dirichlet(0.5, 1)(labels, 20, setup_rng(5, 0)))


def test_the_digits_split_follows_the_seed_and_test_fraction() -> None:
    data = load_data(_config(top={"seed": 8}, data={"test_fraction": 0.3}))
    ref = load_digits(test_fraction=0.3, seed=8)
    assert torch.equal(data.train.x, ref.train.x) and torch.equal(data.test.y, ref.test.y)


def test_synthetic_data_is_the_librarys_and_natural_counts_its_users() -> None:
    raw = loads(SMALL.format(rounds=1, epochs=1))
    raw["data"] = {"name": "synthetic", "alpha": 0.5, "beta": 2.0, "num_users": 7, "iid": False}
    raw["partition"] = {"scheme": "natural", "num_clients": 0}
    cfg = resolve(raw, CATALOG)
    cfg, data, clients = build_clients(cfg)
    ref = synthetic(0.5, 2.0, num_users=7, iid=False, seed=SEED)
    assert torch.equal(data.train.x, ref.train.x) and torch.equal(data.train.y, ref.train.y)
    assert ref.natural_clients is not None
    _same_clients(clients, list(ref.natural_clients))
    assert cfg["partition.num_clients"] == 7  # filled in: the config says what ran


def test_synthetic_iid_refuses_the_alpha_and_beta_it_would_ignore() -> None:
    raw = loads(SMALL.format(rounds=1, epochs=1))
    raw["data"] = {"name": "synthetic", "beta": 3.0, "num_users": 7, "iid": True}
    raw["partition"] = {"scheme": "natural", "num_clients": 0}
    with pytest.raises(ConfigError, match=r"so data.beta would be ignored"):
        build_clients(resolve(raw, CATALOG))  # it built the same data as beta = 1
    del raw["data"]["beta"]
    assert len(build_clients(resolve(raw, CATALOG))[2]) == 7


def test_feature_noise_is_the_librarys_under_the_seed() -> None:
    cfg = _config(partition={"feature_noise": 0.5})
    _, data, clients = build_clients(cfg)
    clean = load_digits(**DIGITS).train.x
    expected = feature_noise(clean, clients, 0.5, setup_rng(SEED, 1))
    assert torch.equal(data.train.x, expected)
    _, data, _ = build_clients(_config(partition={"feature_noise": 2.5}))
    assert not torch.equal(data.train.x, clean)


def test_model_and_initial_parameters_follow_the_seed() -> None:
    exp = build(_config(top={"seed": 11}), progress=False)
    _, init = init_params(lambda: models.mlp(in_features=64, hidden=[32], num_classes=10), 11)
    assert torch.equal(exp.init, init)


def test_the_train_config_is_the_one_built_by_hand() -> None:
    cfg = _config(
        top={"rounds": 4, "seed": 2, "checkpoint_every": 3},
        partition={"num_clients": 8},
        client={"epochs": 3, "batch_size": 0, "min_epochs": 2},
        sampling={
            "clients_per_round": 6,
            "replace": True,
            "weighted": True,
            "weighting": "uniform",
            "straggler_fraction": 0.25,
            "drop_stragglers": True,
        },
        eval={"every": 2, "batch_size": 321},
        runtime={"vectorize": False, "memory_budget_mb": 64},
    )
    exp = build(cfg, progress=False)
    assert exp.train_config == TrainConfig(
        rounds=4,
        sampler=ClientSampler(6, replace=True, weighted=True),
        work=LocalWork(epochs=3, batch_size=None, steps=None, min_epochs=2),
        stragglers=Stragglers(0.25, drop=True),
        weighting="uniform",
        seed=2,
        eval_every=2,
        eval_batch_size=321,
        checkpoint_every=3,  # a checkpoint every round, whatever its cost, before
        device="auto",
        progress=False,
    )
    assert isinstance(exp.runtime, SimRuntime)
    assert (exp.runtime.vectorize, exp.runtime.memory_budget_mb) == (False, 64.0)
    steps = build(_config(client={"steps": 5}), progress=False).train_config.work
    assert steps == LocalWork(epochs=1, batch_size=10, steps=5, min_epochs=None)


@pytest.mark.parametrize(
    ("table", "by_hand"),
    [
        ({"name": "fedavg", "lr": 0.07}, algorithms.fedavg(lr=0.07)),
        ({"name": "fedprox", "lr": 0.02, "mu": 0.1}, algorithms.fedprox(lr=0.02, mu=0.1)),
        (
            {"name": "fedadam", "lr": 0.03, "server_lr": 0.5, "tau": 1e-4},
            algorithms.fedadam(lr=0.03, server_lr=0.5, tau=1e-4),
        ),
        (
            {"name": "fedavgm", "lr": 0.04, "server_lr": 0.7, "momentum": 0.5},
            algorithms.fedavgm(lr=0.04, server_lr=0.7, momentum=0.5),
        ),
    ],
    ids=lambda v: v["name"] if isinstance(v, dict) else "",
)
def test_the_algorithm_is_the_one_built_by_hand(table: dict, by_hand: Any) -> None:
    assert build(_config(algorithm=table), progress=False).algorithm == by_hand


def test_error_feedback_wraps_the_uplink_only() -> None:
    table = {
        "name": "top_k",
        "ratio": 0.1,
        "error_feedback": True,
        "downlink": "top_k",
        "downlink_ratio": 0.2,
    }
    exp = build(_config(compression=table), progress=False)
    assert exp.compressor == compress.error_feedback(compress.top_k(0.1))
    assert exp.downlink == compress.top_k(0.2)
    exp = build(_config(compression={"downlink": "qsgd", "downlink_levels": 4}), progress=False)
    assert exp.compressor == compress.identity()
    assert exp.downlink == compress.qsgd(levels=4, seed=SEED)  # the run's seed


def test_the_cost_model_is_the_one_built_by_hand() -> None:
    network = {
        "profile": "wifi",
        "latency_ms": 7.0,
        "uplink_mbit_s": 3.0,
        "downlink_mbit_s": 9.0,
        "seconds_per_sample": 1e-3,
        "speed_sigma": 0.3,
        "bandwidth_sigma": 0.7,
        "straggler_probability": 0.1,
        "straggler_slowdown": 4.0,
    }
    expected = CostModel(
        Network(
            "wifi (links set in [network])",
            alpha_beta(0.007, 3 * MBIT_S),
            alpha_beta(0.007, 9 * MBIT_S),
        ),
        1e-3,
        Heterogeneity(0.3, 0.7, 0.1, 4.0, seed=9),
    )
    assert build_network(_config(top={"seed": 9}, network=network)) == expected


def test_a_natural_split_with_fewer_users_than_a_round_samples_is_refused() -> None:
    raw = loads(SMALL.format(rounds=1, epochs=1))  # 5 clients per round
    raw["data"] = {"name": "synthetic", "num_users": 4}
    raw["partition"] = {"scheme": "natural", "num_clients": 0}
    with pytest.raises(ConfigError, match=r"sampling.clients_per_round = 5: .* the 4 clients"):
        build_clients(resolve(raw, CATALOG))
    raw["sampling"] = {"clients_per_round": 5, "replace": True}
    assert len(build_clients(resolve(raw, CATALOG))[2]) == 4


def test_a_model_too_large_for_memory_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # An extra 0 in model.hidden ended in torch's allocator traceback (36 lines, exit 1).
    import shoal.cli.build as cli_build

    def out_of_memory(*args: Any, **kw: Any) -> None:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 25600000000 bytes. Error code 12"
        )

    monkeypatch.setattr(cli_build, "init_params", out_of_memory)
    with pytest.raises(ConfigError) as info:
        build(_config(model={"hidden": [100_000_000]}), progress=False)
    assert str(info.value) == (
        'model.name = "mlp" (model.hidden = [100000000]): its parameters do not fit in memory '
        "(one tensor of 23.8 GiB)"
    )
    monkeypatch.setattr(cli_build, "init_params", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other failures are not reworded
        build(_config(), progress=False)
