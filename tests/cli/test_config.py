"""Config handling: defaults, overrides, validation messages and the TOML round trip."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.cli.registry import CATALOG
from shoal.config import (
    SECTIONS,
    TOP,
    UNSAMPLED,
    Config,
    ConfigError,
    _toml_str,
    apply_overrides,
    dumps,
    load,
    loads,
    parse_value,
    resolve,
    resolve_overridden,
    tomllib,
)


def test_defaults_fill_every_key() -> None:
    cfg = resolve({}, CATALOG)
    assert set(TOP) <= set(cfg.values)
    for section, fixed in SECTIONS.items():
        assert set(fixed) <= set(cfg.values[section])
    assert cfg["data.name"] == "digits"
    assert cfg["partition.alpha"] == 0.5  # the default scheme's own option
    assert cfg["model.hidden"] == [200, 200]  # read off mlp's signature
    assert cfg["algorithm.lr"] == 0.05


def test_options_follow_the_chosen_names() -> None:
    cfg = resolve(
        {"partition": {"scheme": "shards"}, "algorithm": {"name": "fedadam", "server_lr": 1}},
        CATALOG,
    )
    assert cfg.options("partition") == {"shards_per_client": 2}
    assert cfg.options("algorithm") == {
        "server_lr": 1.0,
        "beta1": 0.9,
        "beta2": 0.999,
        "tau": 1e-3,
        "bias_correction": False,
    }
    assert isinstance(cfg["algorithm.server_lr"], float)  # an int where a float is due


def test_overrides_parse_toml_values_else_strings() -> None:
    raw = apply_overrides(
        {"data": {"name": "digits"}},
        ["seed=7", "data.name=synthetic", "data.alpha=0.5", "model.hidden=[8, 4]", "x.y=true"],
    )
    assert raw == {
        "seed": 7,
        "data": {"name": "synthetic", "alpha": 0.5},
        "model": {"hidden": [8, 4]},
        "x": {"y": True},
    }
    assert parse_value("../shared/data") == "../shared/data"
    assert parse_value('"quoted"') == "quoted"
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="seed is a value"):
        apply_overrides({"seed": 1}, ["seed.x=1"])


def test_a_set_value_that_opens_toml_but_is_none_is_refused() -> None:
    # "C:\data" was kept with its quotes (\d is no TOML escape): a folder named with quotes.
    for text, words in [
        ('"/tmp/x\\mnist"', ["not a TOML value", "single quotes"]),
        ("[64,", ["[64, is not a TOML value"]),
        ("{name=", ["not a TOML value"]),
    ]:
        with pytest.raises(ConfigError) as info:
            apply_overrides({}, [f"data.cache_dir={text}"])
        for w in words:
            assert w in str(info.value), str(info.value)
    assert parse_value("'C:\\data'") == "C:\\data"  # single quotes take it as written


def test_an_inline_table_sets_its_keys_and_keeps_the_files_others() -> None:
    # It replaced the table: the file's error_feedback = true went, silently.
    raw = {"compression": {"name": "top_k", "ratio": 0.01, "error_feedback": True}}
    out = apply_overrides(raw, ['compression={name="qsgd", levels=4}'], ["compression.ratio"])
    assert out["compression"] == {"name": "qsgd", "levels": 4, "error_feedback": True}
    with pytest.raises(ConfigError, match="compression.ratio"):  # top_k's key under qsgd
        resolve_overridden(raw, ['compression={name="qsgd", levels=4}'], [], CATALOG, "a.toml")


def test_another_profile_does_not_keep_the_files_links_of_the_old_ones_defaults() -> None:
    # A run's config.toml writes wifi's links out; --set network.profile=4g kept them.
    written = resolve({"network": {"profile": "wifi"}}, CATALOG).values
    raw = {"network": dict(written["network"])}
    with pytest.raises(ConfigError) as info:
        resolve_overridden(raw, ["network.profile=4g"], [], CATALOG, "config.toml")
    message = str(info.value)
    assert "network.latency_ms, network.uplink_mbit_s, network.downlink_mbit_s" in message
    assert '"wifi"\'s defaults' in message and "--unset network.uplink_mbit_s" in message
    links = ["network.latency_ms", "network.uplink_mbit_s", "network.downlink_mbit_s"]
    cfg = resolve_overridden(raw, ["network.profile=4g"], links, CATALOG, "config.toml")
    assert cfg == resolve({"network": {"profile": "4g"}}, CATALOG).replace("seed", cfg["seed"])
    # Links the user chose (not wifi's) go with the new profile, as asked.
    raw["network"]["uplink_mbit_s"] = 3.0
    raw["network"].pop("latency_ms"), raw["network"].pop("downlink_mbit_s")
    cfg = resolve_overridden(raw, ["network.profile=4g"], [], CATALOG, "config.toml")
    assert cfg["network.uplink_mbit_s"] == 3.0


def test_an_integer_beyond_int64_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="client.epochs = 100000000000000000000: too large"):
        resolve({"client": {"epochs": 10**20}}, CATALOG)


def test_a_file_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbfseed = 5\n")
    assert load(tmp_path / "bom.toml") == {"seed": 5}


def test_unset_drops_a_key_before_the_assignments() -> None:
    raw = {"seed": 1, "compression": {"name": "top_k", "ratio": 0.01}}
    out = apply_overrides(raw, ["compression.name=qsgd"], ["compression.ratio", "seed"])
    assert out == {"compression": {"name": "qsgd"}}
    assert raw["compression"] == {"name": "top_k", "ratio": 0.01}  # the input is not changed
    # After unsetting, the key can be set again.
    assert apply_overrides(raw, ["seed=2"], ["seed"])["seed"] == 2
    assert apply_overrides(raw, [], ["compression"]) == {"seed": 1}  # a whole table
    for key in ("compression.k", "rounds", "seed.x", "a.b.c", ""):  # typos are refused
        with pytest.raises(ConfigError, match="sets no such key"):
            apply_overrides(raw, [], [key])


def test_an_unknown_key_from_the_file_says_how_to_drop_it() -> None:
    raw = {"compression": {"name": "top_k", "ratio": 0.01}}
    with pytest.raises(ConfigError) as info:  # --set switched the name; the file's ratio stays
        resolve_overridden(raw, ["compression.name=qsgd"], [], CATALOG, "a.toml")
    message = str(info.value)
    assert 'for compression "qsgd"' in message and "levels" in message
    assert message.endswith("(set in a.toml: --unset compression.ratio drops it)")
    # A key the command line set itself gets no such hint: the --set is the mistake.
    with pytest.raises(ConfigError) as info:
        resolve_overridden(raw, ["compression.rate=2"], [], CATALOG, "a.toml")
    assert "compression.rate" in str(info.value) and "--unset" not in str(info.value)

    with pytest.raises(ConfigError) as info:  # a misspelled table, from --set too
        resolve_overridden(raw, ["compresion.name=qsgd"], [], CATALOG, "a.toml")
    assert "'compresion'" in str(info.value) and "--unset" not in str(info.value)
    cfg = resolve_overridden(
        raw, ["compression.name=qsgd", "compression.levels=4"], ["compression.ratio"], CATALOG, "a"
    )
    assert cfg["compression.name"] == "qsgd" and cfg["compression.levels"] == 4
    # Every stale key at once: a wifi run's config switched to "none" was refused one key
    # per attempt, nine times over.
    wifi = {"network": {"profile": "wifi", "latency_ms": 5.0, "uplink_mbit_s": 50.0}}
    with pytest.raises(ConfigError) as info:
        resolve_overridden(wifi, ["network.profile=none"], [], CATALOG, "a.toml")
    assert str(info.value).startswith(
        "unknown keys 'network.latency_ms', 'network.uplink_mbit_s' for network \"none\""
    )
    assert str(info.value).endswith(
        "(set in a.toml: --unset network.latency_ms --unset network.uplink_mbit_s drops them)"
    )
    # A --set typo among them is not the file's to drop.
    with pytest.raises(ConfigError) as info:
        resolve_overridden(
            wifi, ["network.profile=none", "network.a_typo=1"], [], CATALOG, "a.toml"
        )
    assert "'network.a_typo'" in str(info.value)
    assert "--unset network.a_typo" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"sead": 1}, ["'sead'", "seed"]),
        ({"sampling": {"per_round": 3}}, ["sampling.per_round", "clients_per_round"]),
        ({"rounds": "10"}, ["rounds", "integer"]),
        ({"rounds": 0}, ["rounds", ">= 1"]),
        ({"runtime": {"vectorize": 1}}, ["runtime.vectorize", "true or false"]),
        ({"partition": {"alpha": 0}}, ["partition.alpha", "> 0"]),
        ({"partition": {"num_clients": 5}}, ["sampling.clients_per_round", "<= partition"]),
        ({"sampling": {"weighting": "size"}}, ["sampling.weighting", '"samples", "uniform"']),
        ({"algorithm": {"name": "fedavgg"}}, ["algorithm.name", '"fedavg"', '"fedprox"']),
        ({"algorithm": {"name": "fedprox"}}, ["algorithm.mu", "required"]),
        ({"algorithm": {"mu": 1.0}}, ["algorithm.mu", "name, lr"]),
        ({"model": {"num_classes": 3}}, ["model.num_classes", "hidden"]),
        ({"model": {"name": "cnn", "padding": "full"}}, ["model.padding", '"same"']),
        ({"data": {"dir": "no/such/folder"}}, ["data.dir", "no/such/folder"]),
        ({"data": {"name": "synthetic", "alpha": -1}}, ["data.alpha", ">= 0"]),
        ({"client": {"epochs": 2, "min_epochs": 3}}, ["client.min_epochs", "client.epochs"]),
        ({"device": "gpu"}, ["device", "cuda:N"]),
        # numpy splits a larger seed into 32-bit words, sharing another seed's draws
        ({"seed": 2**32}, ["seed = 4294967296", "< 2**32"]),
        ({"eval": 3}, ["eval", "table"]),
        ({"network": {"uplink_mbit_s": 2.0}}, ['network "none"', "allowed in [network]: profile"]),
        # "nan: must be >= 0" and "inf: must be > 0" read as if the value met the rule
        (
            {"network": {"profile": "wifi", "latency_ms": float("nan")}},
            ["nan: must be a number >= 0"],
        ),
        (
            {"network": {"profile": "wifi", "uplink_mbit_s": float("inf")}},
            ["inf: must be finite and > 0"],
        ),
        # ... where the rule says "finite" itself: "must be a number a finite number > 0"
        ({"partition": {"alpha": float("nan")}}, ["alpha = nan: must be a finite number > 0"]),
        ({"algorithm": {"lr": float("inf")}}, ["lr = inf: must be a finite number > 0"]),
        # TOML values that the message could not show (a TypeError traceback before):
        ({"data": [{"name": "mnist"}]}, ["data = [a table]", "must be a table"]),  # [[data]]
        ({"model": {"hidden": [datetime.date(1979, 5, 27)]}}, ["model.hidden", "integers"]),
        # --set data.dir=2024 reads as TOML: a number, or a date (shown as "datetime.date(...)")
        ({"data": {"dir": 2024}}, ["data.dir = 2024: must be a string", "'data.dir=\"2024\"'"]),
        ({"data": {"dir": datetime.date(2024, 1, 2)}}, ["data.dir = 2024-01-02", '"2024-01-02"']),
    ],
)
def test_mistakes_name_the_key(raw: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw, CATALOG)
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    raw = {
        "rounds": 4,
        "data": {"name": "synthetic", "iid": True, "dir": ""},
        "partition": {"scheme": "natural", "num_clients": 0, "feature_noise": 0.25},
        "model": {"name": "cnn", "padding": 1},
        "algorithm": {"name": "fedyogi", "server_lr": 0.01, "tau": 1e-4},
        "runtime": {"memory_budget_mb": 64},
    }
    cfg = resolve(raw, CATALOG)
    path = tmp_path / "c.toml"
    path.write_text(dumps(cfg, "a header\nof two lines"))
    again = resolve(load(path), CATALOG)
    assert again == cfg
    assert dumps(again) == dumps(cfg)


# A config that sets only its own kind's keys (and a few both kinds read).
FEDERATED = {
    "rounds": 3,
    "algorithm": {"name": "fedavg"},
    "compression": {"downlink": "top_k", "downlink_ratio": 0.1},
    "client": {"epochs": 2},
    "sampling": {"clients_per_round": 4},
    "runtime": {"vectorize": False, "memory_budget_mb": 64},
    "eval": {"every": 2, "batch_size": 500},
}
DATA_PARALLEL = {
    "partition": {"scheme": "iid", "num_clients": 4},
    "algorithm": {"name": "dpsgd", "momentum": 0.9},
    "network": {"profile": "wifi", "codec_seconds_per_element": 2e-9},
    "runtime": {"timeout_s": 30},
    "eval": {"batch_size": 500},
    "parallel": {"steps": 600, "batch_size": 16, "eval_every": 100, "topology": "ring"},
}


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({**FEDERATED, "parallel": {"steps": 600}}, "parallel.steps", ["federated", '"dpsgd"']),
        ({**FEDERATED, "parallel": {"topology": "ring"}}, "parallel.topology", ["federated"]),
        (
            {**FEDERATED, "network": {"profile": "wifi", "codec_seconds_per_element": 1e-9}},
            "network.codec_seconds_per_element",
            ["federated", "data-parallel algorithms"],
        ),
        ({**DATA_PARALLEL, "rounds": 30}, "rounds", ["data-parallel", "parallel.steps"]),
        ({**DATA_PARALLEL, "checkpoint_every": 5}, "checkpoint_every", ["data-parallel"]),
        ({**DATA_PARALLEL, "client": {"epochs": 2}}, "client.epochs", ["data-parallel"]),
        (
            {**DATA_PARALLEL, "sampling": {"clients_per_round": 4}},
            "sampling.clients_per_round",
            ["data-parallel"],
        ),
        (
            {**DATA_PARALLEL, "compression": {"downlink": "top_k", "downlink_ratio": 0.1}},
            "compression.downlink",
            ["data-parallel"],
        ),
        ({**DATA_PARALLEL, "eval": {"every": 5}}, "eval.every", ["data-parallel"]),
        ({**DATA_PARALLEL, "runtime": {"vectorize": True}}, "runtime.vectorize", []),
    ],
)
def test_a_key_the_algorithm_kind_ignores_is_refused(raw: dict, key: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw, CATALOG)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key} is set, but algorithm.name = ")
    for w in words:
        assert w in message


def test_the_first_ignored_key_is_reported_in_schema_order() -> None:
    # rounds before the tables, and a table's keys in the schema's order, however written.
    raw = {"sampling": {"weighted": True}, "client": {"steps": 2, "epochs": 2}, "rounds": 5}
    with pytest.raises(ConfigError, match=r"^rounds is set"):
        resolve({**DATA_PARALLEL, **raw}, CATALOG)
    del raw["rounds"]
    with pytest.raises(ConfigError, match=r"^client\.epochs is set"):
        resolve({**DATA_PARALLEL, **raw}, CATALOG)


def test_the_data_parallel_names_come_from_the_catalog() -> None:
    with pytest.raises(ConfigError) as info:
        resolve({"parallel": {"steps": 10}}, CATALOG)
    assert ", ".join(f'"{n}"' for n in CATALOG[UNSAMPLED]) in str(info.value)


def test_a_key_at_its_default_is_not_refused() -> None:
    # It changes nothing either way; a resolved config.toml holds both kinds' keys so.
    resolve({**DATA_PARALLEL, "rounds": 20, "sampling": {"clients_per_round": 10}}, CATALOG)
    resolve({**FEDERATED, "parallel": {"steps": 500, "topology": "auto"}}, CATALOG)
    # Also a key of a chosen name's own (the network profile's), at that name's default.
    network = {"profile": "wifi", "codec_seconds_per_element": 0.0}
    resolve({**FEDERATED, "network": network}, CATALOG)


@pytest.mark.parametrize("raw", [FEDERATED, DATA_PARALLEL])
def test_a_config_of_either_kind_with_its_own_keys_resolves(raw: dict) -> None:
    cfg = resolve(raw, CATALOG)
    assert cfg["algorithm.name"] == raw["algorithm"]["name"]
    assert cfg["eval.batch_size"] == 500


@pytest.mark.parametrize("raw", [FEDERATED, DATA_PARALLEL])
def test_resolved_config_of_either_kind_round_trips(raw: dict, tmp_path: Path) -> None:
    # The written config has every default filled in, so it holds the other kind's keys too
    # (at their defaults): re-reading it, as --resume does, must not refuse them.
    cfg = resolve(raw, CATALOG)
    text = dumps(cfg)
    assert "[parallel]" in text and "[client]" in text
    path = tmp_path / "config.toml"
    path.write_text(text)
    again = resolve(load(path), CATALOG)
    assert again == cfg
    assert dumps(again) == text


@pytest.mark.parametrize(
    "path",
    [
        *sorted((Path(__file__).parents[2] / "examples").glob("*.toml")),
        Path(__file__).parents[2] / "src" / "shoal" / "configs" / "demo.toml",
    ],
    ids=lambda p: p.name,
)
def test_the_shipped_configs_resolve(path: Path) -> None:
    # examples/fedavg_mnist5k.toml spells out [parallel] at its defaults: not refused.
    raw = load(path)
    raw.get("data", {}).pop("dir", None)  # a data folder that may not exist here
    resolve(raw, CATALOG)


def test_bad_toml_is_one_line() -> None:
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        loads("rounds = = 3", "x.toml")
    assert "\n" not in str(info.value)


@given(st.text())
def test_strings_survive_the_writer(s: str) -> None:
    assert tomllib.loads(f"v = {_toml_str(s)}")["v"] == s


@given(st.floats(allow_nan=False) | st.integers(-(2**63), 2**63 - 1) | st.booleans())
def test_scalars_survive_the_writer(v: float | int | bool) -> None:
    text = dumps(Config({"v": v, "t": {"w": [v, v]}}))
    assert tomllib.loads(text) == {"v": v, "t": {"w": [v, v]}}


def test_a_value_the_file_set_for_the_old_name_says_how_to_drop_it() -> None:
    # mlp's hidden list under char_lstm (an integer there): the hint was missing.
    raw = {"model": {"name": "mlp", "hidden": [200, 200]}}
    with pytest.raises(ConfigError) as info:
        resolve_overridden(raw, ["model.name=char_lstm"], [], CATALOG, "a.toml")
    message = str(info.value)
    assert message.startswith("model.hidden = [200, 200]: must be an integer")
    assert message.endswith("(set in a.toml: --unset model.hidden drops it)")
    # Without a new name the file's value is simply wrong: no hint to drop it.
    with pytest.raises(ConfigError) as info:
        resolve_overridden({"model": {"name": "mlp", "hidden": 3}}, [], [], CATALOG, "a.toml")
    assert "--unset" not in str(info.value)
