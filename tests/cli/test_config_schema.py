"""Config handling: the documented defaults, the boundaries of the
ranges, the types a value must have, and what ``--set``/``--unset`` touch."""

from __future__ import annotations

import re

import pytest

import shoal.config
from shoal.cli.registry import CATALOG, network_params
from shoal.config import (
    ConfigError,
    apply_overrides,
    check_num_clients,
    resolve,
    tomllib,
)
from shoal.cost import Heterogeneity


def _documented_defaults() -> dict:
    """The schema in :mod:`shoal.config`'s docstring, read as TOML (comments dropped)."""
    schema = shoal.config.__doc__.split("::", 1)[1].split("A key that only", 1)[0]
    lines = [re.sub(r"\s+#.*$", "", line.strip()) for line in schema.splitlines()]
    return tomllib.loads("\n".join(line for line in lines if line and line[0] != "#"))


def test_the_schema_names_every_choice_the_registry_offers() -> None:
    # dgc and the lgreco_* compressors were missing from the docstring's lists.
    for section in ("data", "partition", "model", "algorithm", "compression", "network"):
        for name in CATALOG[section]:
            assert re.search(rf"\b{name}\b", shoal.config.__doc__), (section, name)


def test_the_fixed_defaults_are_the_documented_ones() -> None:
    documented = _documented_defaults()
    cfg = resolve({}, CATALOG)
    assert set(documented) == set(cfg.values)
    for key, value in documented.items():
        if isinstance(value, dict):
            for k, v in value.items():
                got = cfg[f"{key}.{k}"]
                assert got == v and type(got) in (type(v), float), (key, k, got, v)
        else:
            assert cfg[key] == value and type(cfg[key]) is type(value), key


def test_the_default_schemes_options_are_the_documented_ones() -> None:
    # registry: alpha 0.5 and min_size 1 (NIID-Bench's 10 is infeasible on 100 digits clients).
    cfg = resolve({}, CATALOG)
    assert cfg.options("partition") == {"alpha": 0.5, "min_size": 1}
    assert resolve({"partition": {"min_size": 0}}, CATALOG)["partition.min_size"] == 0
    hsu = resolve({"partition": {"scheme": "hsu_dirichlet"}}, CATALOG)
    assert hsu.options("partition") == {"alpha": 0.5, "samples_per_client": 0}
    # 0 (N // num_clients) as written out in a run's config.toml, so --resume reads it back.
    explicit = {"scheme": "hsu_dirichlet", "samples_per_client": 0}
    assert resolve({"partition": explicit}, CATALOG) == hsu


def test_a_network_profiles_heterogeneity_defaults_are_the_librarys() -> None:
    ref = Heterogeneity()
    for profile in ("datacenter", "ethernet_1g", "wifi", "4g"):
        params = network_params(profile)
        for name in ("speed_sigma", "bandwidth_sigma", "straggler_probability"):
            assert params[name].default == getattr(ref, name), (profile, name)
        assert params["straggler_slowdown"].default == ref.straggler_slowdown == 10.0


@pytest.mark.parametrize(
    ("raw", "key", "must_be"),
    [
        ({"compression": {"error_feedback": "false"}}, "compression.error_feedback", "true or"),
        ({"sampling": {"replace": "true"}}, "sampling.replace", "true or false"),
        ({"data": {"download": "no"}}, "data.download", "true or false"),
        ({"rounds": True}, "rounds", "an integer"),
        ({"client": {"epochs": True}}, "client.epochs", "an integer"),
        ({"sampling": {"clients_per_round": False}}, "sampling.clients_per_round", "an integer"),
    ],
)
def test_a_string_is_no_bool_and_a_bool_no_integer(raw: dict, key: str, must_be: str) -> None:
    # TOML's "false" is a string, and true is no number: neither may pass as the other.
    with pytest.raises(ConfigError) as info:
        resolve(raw, CATALOG)
    assert str(info.value).startswith(f"{key} = ") and must_be in str(info.value)


@pytest.mark.parametrize(
    ("key", "edge", "beyond"),
    [
        ("sampling.straggler_fraction", 1.0, 1.0001),
        ("sampling.straggler_fraction", 0.0, -0.0001),
        ("parallel.slowdown_factor", 1.0, 0.9999),
        ("parallel.target_accuracy", 1.0, 1.0001),
        ("parallel.slowdown_worker", -1, -2),
        ("client.min_epochs", 0, -1),
        ("client.batch_size", 0, -1),
        ("partition.feature_noise", 0.0, -0.0001),
        ("rounds", 1, 0),
    ],
)
def test_range_edges_are_inclusive_as_documented(key: str, edge: float, beyond: float) -> None:
    section, _, name = key.rpartition(".")
    data_parallel = section == "parallel"
    base: dict = {"algorithm": {"name": "sync_sgd"}} if data_parallel else {}

    def raw(v: float) -> dict:
        return {**base, section: {name: v}} if section else {**base, name: v}

    assert resolve(raw(edge), CATALOG)[key] == edge
    with pytest.raises(ConfigError, match=re.escape(key)):
        resolve(raw(beyond), CATALOG)


def test_clients_per_round_may_equal_the_clients() -> None:
    cfg = resolve({"partition": {"num_clients": 7}, "sampling": {"clients_per_round": 7}}, CATALOG)
    assert cfg["sampling.clients_per_round"] == 7
    check_num_clients(cfg, 7)
    with pytest.raises(ConfigError, match="sampling.clients_per_round = 8"):
        resolve({"partition": {"num_clients": 7}, "sampling": {"clients_per_round": 8}}, CATALOG)
    with pytest.raises(ConfigError, match="sampling.clients_per_round = 7"):
        check_num_clients(cfg, 6)


def test_sampling_with_replacement_may_draw_more_than_the_clients() -> None:
    raw = {"partition": {"num_clients": 4}, "sampling": {"clients_per_round": 9, "replace": True}}
    cfg = resolve(raw, CATALOG)
    check_num_clients(cfg, 4)  # also once the data has fixed the count (natural splits)
    check_num_clients(cfg, 1)


def test_min_epochs_may_equal_epochs() -> None:
    cfg = resolve({"client": {"epochs": 3, "min_epochs": 3}}, CATALOG)
    assert (cfg["client.epochs"], cfg["client.min_epochs"]) == (3, 3)


def test_set_and_unset_refuse_three_part_keys() -> None:
    raw = {"compression": {"name": "top_k", "ratio": 0.01}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(raw, ["compression.top_k.ratio=0.5"])
    with pytest.raises(ConfigError, match="sets no such key"):
        apply_overrides(raw, [], ["compression.x.ratio"])
    assert apply_overrides(raw, [], ["compression.ratio"]) == {"compression": {"name": "top_k"}}


def test_replace_leaves_the_original_config_alone() -> None:
    cfg = resolve({"model": {"hidden": [8]}}, CATALOG)
    other = cfg.replace("partition.num_clients", 7).replace("model.hidden", [4])
    assert other["partition.num_clients"] == 7 and other["model.hidden"] == [4]
    assert cfg["partition.num_clients"] == 100 and cfg["model.hidden"] == [8]
    assert cfg == resolve({"model": {"hidden": [8]}}, CATALOG)
