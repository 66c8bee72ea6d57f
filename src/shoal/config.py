"""Experiment configs: a TOML file in, a validated config with every default filled in out.

The schema (two levels: top-level keys, then one table per concern)::

    seed = 0            # every random choice: model init, partition, sampling, batches,
                        # and the compressors' draws unless compression.seed (uplink) or
                        # compression.downlink_seed (downlink) pins them
    rounds = 20
    checkpoint_every = 1  # rounds between checkpoints (resume points); each holds every
                        # client's state, e.g. error feedback's residuals: raise it for those
    device = "auto"     # auto | cpu | cuda | cuda:N
    num_threads = 0     # torch intra-op threads; 0 = torch's default (1 a worker under launch)

    [data]
    name = "digits"     # digits | mnist | fashion_mnist | emnist | cifar10 | cifar100 |
                        # femnist | shakespeare | synthetic
    dir = ""            # a folder to read instead of the cache; relative to the current directory
    download = false    # fetch into the cache folder when missing
    cache_dir = ""      # default: $SHOAL_DATA or ~/.cache/shoal
    # per dataset: digits test_fraction; synthetic alpha, beta, iid, num_users;
    # emnist split; cifar100 coarse; shakespeare seq_len

    [partition]
    scheme = "dirichlet"  # iid | dirichlet | hsu_dirichlet | shards | classes | quantity | natural
    num_clients = 100     # natural: 0 = one client per user of the data
    feature_noise = 0.0   # sigma of NIID-Bench's per-client Gaussian feature noise, any scheme
    # per scheme: alpha, min_size (dirichlet); alpha, samples_per_client (hsu_dirichlet);
    # shards_per_client (shards); classes_per_client (classes); beta, min_size (quantity)

    [model]
    name = "mlp"        # mclr | mlp | cnn | resnet_small | char_lstm; other keys go to the factory
                        # (hidden, padding, width, ...); input size, channels and classes come
                        # from the data

    [algorithm]
    name = "fedavg"     # fedsgd | fedavg | fedprox | scaffold | fedavgm | fedadagrad | fedadam |
                        # fedyogi | fednova; or a data-parallel one (see [parallel])
    lr = 0.05           # client learning rate; every other key goes to the factory (mu, ...)

    [compression]
    name = "identity"   # identity | fp16 | bf16 | top_k | random_k | threshold | dgc_top_k |
                        # qsgd | terngrad | scaled_sign | natural_compression | powersgd |
                        # count_sketch | lgreco_top_k | lgreco_qsgd | lgreco_powersgd; every
                        # other key goes to the factory (ratio, levels, rank, ...); the shapes of
                        # powersgd and the lgreco_* come from the model
    error_feedback = false  # wrap the compressor in error feedback (a residual per client)
    downlink = "identity"   # the server's broadcast, compressed against the clients' copy (any
                        # name above; its options prefixed: downlink_ratio, downlink_levels, ...)

    [network]
    profile = "none"    # none | datacenter | ethernet_1g | wifi | 4g: simulated time per round;
                        # the profile's values, overridable: latency_ms, uplink_mbit_s,
                        # downlink_mbit_s; seconds_per_sample (compute);
                        # codec_seconds_per_element (compression, data-parallel runs: see
                        # shoal.cost.measure_codec); heterogeneity: speed_sigma,
                        # bandwidth_sigma, straggler_probability, straggler_slowdown

    [client]
    epochs = 1
    batch_size = 10     # 0 = the whole local dataset as one batch
    steps = 0           # > 0: exactly this many local steps instead of epochs (epochs = 1)
    min_epochs = 0      # > 0: epochs drawn uniformly from [min_epochs, epochs] per client/round

    [sampling]
    clients_per_round = 10
    replace = false
    weighted = false    # sample clients by size (probability n_k / n with replace = true)
    weighting = "samples"   # aggregation weights: samples | uniform
    straggler_fraction = 0.0
    drop_stragglers = false

    [runtime]
    kind = "auto"       # sim | dist | "auto" (auto: dist under `shoal launch` / torchrun)
    vectorize = "auto"  # true | false | "auto" (auto: on a CPU, conv models are looped)
    memory_budget_mb = 1024
    timeout_s = 120     # dist: how long a collective waits for a peer that died or stalled

    [eval]
    every = 1
    batch_size = 1000

    [parallel]          # data-parallel / decentralized algorithms (sync_sgd, dgc, local_sgd,
                        # dpsgd, sgp, easgd, eamsgd): one worker per partition client, step by step
    steps = 500
    batch_size = 32     # per worker and step
    eval_every = 50
    target_accuracy = 0.0   # > 0: stop at the first evaluation reaching it (run finished)
    checkpoint_every = 100
    topology = "auto"   # dpsgd/sgp graph: auto (ring for dpsgd, one-peer exponential for sgp) |
                        # complete | ring | exponential | one_peer_exponential
    slowdown_worker = -1    # >= 0: that worker computes slowdown_factor times slower
    slowdown_factor = 5.0

A key that only the other kind of algorithm reads (see :data:`FEDERATED_ONLY`: rounds,
``[client]``, ``[sampling]``, ... for a data-parallel one; ``[parallel]`` for a federated one)
is refused rather than silently ignored, unless it is at its default.

This module knows the fixed keys. The keys that depend on a choice (a dataset's, a scheme's,
a model's, an algorithm's or a compressor's own options) come from a :data:`Catalog` that the
CLI builds from its one name -> factory mapping, so no dataset, algorithm or compressor name is
spelled here.
"""

from __future__ import annotations

import copy
import datetime
import math
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from shoal.checks import SEED_LIMIT, stragglers_keep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "REQUIRED",
    "Catalog",
    "Config",
    "ConfigError",
    "Param",
    "UnknownKey",
    "apply_overrides",
    "check_num_clients",
    "describe",
    "dumps",
    "load",
    "loads",
    "parse_value",
    "resolve",
    "resolve_overridden",
]


class ConfigError(ValueError):
    """A config mistake; the message names the dotted key, what was given and what is allowed."""


class UnknownKey(ConfigError):
    """A key that no table (or no chosen name) takes; ``key`` is its dotted name, ``keys``
    every such key of its table (all named at once: a table switched to a name with fewer
    options, ``network.profile = "none"``, was refused one key per attempt, nine times)."""

    def __init__(self, key: str, message: str, keys: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.key = key
        self.keys = list(keys) or [key]


class BadValue(ConfigError):
    """A value a key does not take; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a :class:`Param` that has none: the config must set it."""


@dataclass(frozen=True)
class Param:
    """One config key: its type (a type hint), default, and the range it must lie in.

    ``kind`` is a type hint such as ``int``, ``float | None``, ``Sequence[int]`` or
    ``Literal["same", "valid"] | int``. ``default=None`` means "unset": the key is left out of
    the resolved config and the factory's own default applies.
    """

    kind: Any
    default: Any = REQUIRED
    check: Callable[[Any], bool] | None = None
    allowed: str = ""
    """What ``check`` accepts, in words, e.g. ``"> 0"``."""
    choices: tuple[str, ...] = ()


Catalog = Mapping[str, Mapping[str, Callable[[], Mapping[str, Param]]]]
"""``{section: {name: () -> {option: Param}}}`` for the sections whose keys depend on a name."""


def _ge(lo: float) -> Callable[[Any], bool]:
    return lambda v: v >= lo


def _positive(v: float) -> bool:
    return 0 < v < math.inf


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

TOP: dict[str, Param] = {
    "seed": Param(int, 0, lambda v: 0 <= v < SEED_LIMIT, ">= 0 and < 2**32"),
    "rounds": Param(int, 20, _ge(1), ">= 1"),
    "checkpoint_every": Param(int, 1, _ge(1), ">= 1"),
    "device": Param(
        str, "auto", lambda v: _DEVICE.fullmatch(v) is not None, "auto, cpu, cuda or cuda:N"
    ),
    "num_threads": Param(int, 0, _ge(0), ">= 0 (0 = torch's default)"),
}

SECTIONS: dict[str, dict[str, Param]] = {
    "data": {
        "name": Param(str, "digits"),
        "dir": Param(str, ""),
        "download": Param(bool, False),
        "cache_dir": Param(str, ""),
    },
    "partition": {
        "scheme": Param(str, "dirichlet"),
        "num_clients": Param(int, 100, _ge(0), ">= 1 (0 only with scheme natural)"),
        "feature_noise": Param(float, 0.0, lambda v: 0 <= v < math.inf, ">= 0"),
    },
    "model": {"name": Param(str, "mlp")},
    "algorithm": {
        "name": Param(str, "fedavg"),
        "lr": Param(float, 0.05, _positive, "a finite number > 0"),
    },
    "compression": {
        "name": Param(str, "identity"),
        "error_feedback": Param(bool, False),
        "downlink": Param(str, "identity"),
    },
    "network": {"profile": Param(str, "none")},
    "client": {
        "epochs": Param(int, 1, _ge(1), ">= 1"),
        "batch_size": Param(int, 10, _ge(0), ">= 0 (0 = full local batch)"),
        "steps": Param(int, 0, _ge(0), ">= 0 (0 = use epochs)"),
        "min_epochs": Param(int, 0, _ge(0), ">= 0 (0 = every client runs epochs)"),
    },
    "sampling": {
        "clients_per_round": Param(int, 10, _ge(1), ">= 1"),
        "replace": Param(bool, False),
        "weighted": Param(bool, False),
        "weighting": Param(str, "samples", choices=("samples", "uniform")),
        "straggler_fraction": Param(float, 0.0, lambda v: 0 <= v <= 1, "in [0, 1]"),
        "drop_stragglers": Param(bool, False),
    },
    "runtime": {
        "kind": Param(str, "auto", choices=("auto", "sim", "dist")),
        "vectorize": Param(Literal["auto"] | bool, "auto"),
        "memory_budget_mb": Param(float, 1024.0, _positive, "a finite number > 0"),
        "timeout_s": Param(float, 120.0, _positive, "a finite number of seconds > 0"),
    },
    "eval": {
        "every": Param(int, 1, _ge(1), ">= 1"),
        "batch_size": Param(int, 1000, _ge(1), ">= 1"),
    },
    "parallel": {
        "steps": Param(int, 500, _ge(1), ">= 1"),
        "batch_size": Param(int, 32, _ge(1), ">= 1"),
        "eval_every": Param(int, 50, _ge(1), ">= 1"),
        "target_accuracy": Param(float, 0.0, lambda v: 0 <= v <= 1, "in [0, 1] (0 = none)"),
        "checkpoint_every": Param(int, 100, _ge(1), ">= 1"),
        "topology": Param(
            str,
            "auto",
            choices=("auto", "complete", "ring", "exponential", "one_peer_exponential"),
        ),
        "slowdown_worker": Param(int, -1, _ge(-1), ">= -1 (-1 = none)"),
        "slowdown_factor": Param(float, 5.0, lambda v: 1 <= v < math.inf, ">= 1"),
    },
}

SELECTORS = {
    "data": "name",
    "partition": "scheme",
    "model": "name",
    "algorithm": "name",
    "compression": "name",
    "network": "profile",
}
"""The key of each section whose value picks that section's extra options from the catalog."""

SUBSELECTORS = {"compression": ("downlink", "downlink_")}
"""A second key that picks from the same section's catalog; its options carry the prefix
(``downlink = "top_k"`` with ``downlink_ratio = 0.01``)."""


@dataclass(frozen=True)
class Config:
    """A resolved config: top-level values and one dict per section, every default filled in."""

    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        """``cfg["seed"]`` or ``cfg["sampling.clients_per_round"]``."""
        section, _, name = key.rpartition(".")
        return self.values[section][name] if section else self.values[name]

    def options(self, section: str, prefix: str = "") -> dict[str, Any]:
        """The section's keys beyond the fixed schema: those passed on to a factory.

        With ``prefix`` (see :data:`SUBSELECTORS`), the options of the section's second choice,
        without the prefix; without it, those are left out.
        """
        extra = {k: v for k, v in self.values[section].items() if k not in SECTIONS[section]}
        if prefix:
            return {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}
        sub = SUBSELECTORS.get(section)
        return {k: v for k, v in extra.items() if sub is None or not k.startswith(sub[1])}

    def replace(self, key: str, value: Any) -> Config:
        """A copy with one dotted key set (no validation: for values the data determines)."""
        values = copy.deepcopy(self.values)
        section, _, name = key.rpartition(".")
        (values[section] if section else values)[name] = value
        return Config(values)


# ----------------------------------------------------------------------------- values and types


class _Mismatch(Exception):
    pass


def _coerce(value: Any, kind: Any) -> Any:
    """``value`` converted to ``kind`` (int -> float, array -> list) or :class:`_Mismatch`."""
    origin = get_origin(kind)
    if kind is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in get_args(kind)):
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arm in get_args(kind):
            if arm is not type(None):
                try:
                    return _coerce(value, arm)
                except _Mismatch:
                    pass
        raise _Mismatch
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list):
            raise _Mismatch
        elem = next((a for a in get_args(kind) if a is not Ellipsis), Any)
        return [_coerce(v, elem) for v in value]
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise _Mismatch


def describe(kind: Any) -> str | None:
    """``kind`` in words, or None when a TOML value cannot express it (e.g. an object)."""
    origin = get_origin(kind)
    if origin is Literal:
        return " or ".join(_show(a) for a in get_args(kind))
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in get_args(kind) if a is not type(None)]
        return None if None in parts else " or ".join(p for p in parts if p)
    if origin in (list, tuple, Sequence):
        elem = next((a for a in get_args(kind) if a is not Ellipsis), Any)
        plural = _PLURALS.get(elem) if elem is Any or isinstance(elem, type) else None
        return None if plural is None else f"an array of {plural}"
    return _NAMES.get(kind) if kind is Any or isinstance(kind, type) else None


_NAMES: dict[Any, str] = {
    Any: "a value",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}
_PLURALS: dict[Any, str] = {
    Any: "values",
    bool: "booleans",
    int: "integers",
    float: "numbers",
    str: "strings",
}


def _show(value: Any) -> str:
    """A value as it would be written in TOML (strings quoted), for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):  # element by element: [[data]] gives a list of tables
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, (datetime.date, datetime.time)):  # TOML's dates and times
        return value.isoformat()
    return repr(value)


def _value(key: str, given: Any, param: Param, *, missing: bool) -> Any:
    if missing:
        if param.default is REQUIRED:
            raise ConfigError(f"{key} is required: set it to {describe(param.kind)}")
        return copy.deepcopy(param.default)
    try:
        value = _coerce(given, param.kind)
    except _Mismatch:
        hint = ""
        if not isinstance(given, (str, dict, list)) and _fits(_show(given), param.kind):
            # --set data.dir=2024 reads as TOML: a number (or a date), not the folder's name.
            hint = f" (quoted, it is one: --set '{key}=\"{_show(given)}\"')"
        raise BadValue(
            key, f"{key} = {_show(given)}: must be {describe(param.kind)}{hint}"
        ) from None
    if isinstance(value, int) and not -(2**63) <= value < 2**63:  # OverflowError tracebacks
        raise BadValue(key, f"{key} = {_show(value)}: too large (at most 2**63 - 1)")
    if param.choices and value not in param.choices:
        raise BadValue(key, f"{key} = {_show(value)}: must be one of {_join(param.choices)}")
    if param.check is not None and not param.check(value):
        # "latency_ms = nan: must be >= 0" and "uplink_mbit_s = inf: must be > 0" read wrong.
        # An allowed text that names finiteness itself ("a finite number > 0") needs no prefix:
        # "must be a number a finite number > 0" read garbled.
        finite = isinstance(value, float) and not math.isfinite(value)
        kind = ("a number " if math.isnan(value) else "finite and ") if finite else ""
        if "finite" in param.allowed:
            kind = ""
        raise BadValue(key, f"{key} = {_show(value)}: must be {kind}{param.allowed}")
    return value


def _fits(value: Any, kind: Any) -> bool:
    try:
        _coerce(value, kind)
    except _Mismatch:
        return False
    return True


def _join(names: Sequence[str]) -> str:
    return ", ".join(_show(n) for n in names)


# ----------------------------------------------------------------------------- resolving


def resolve(raw: Mapping[str, Any], catalog: Catalog) -> Config:
    """Validate ``raw`` (parsed TOML plus overrides) and fill in every default.

    Raises :class:`ConfigError` for an unknown key, a wrong type, a value out of range, an
    unknown name or a key the chosen algorithm's kind does not use; the message names the
    dotted key and what is allowed.
    """
    allowed_top = [*TOP, *SECTIONS]
    for key in raw:
        if key not in allowed_top:
            raise UnknownKey(
                key,
                f"unknown key {key!r}; allowed top-level keys: {', '.join(TOP)}; "
                f"tables: {', '.join(f'[{s}]' for s in SECTIONS)}",
            )
    out: dict[str, Any] = {
        k: _value(k, raw.get(k), p, missing=k not in raw) for k, p in TOP.items()
    }
    schema: dict[str, Mapping[str, Param]] = {}  # each table's keys, the chosen names' included
    for section, fixed in SECTIONS.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(
                f"{section} = {_show(given)}: must be a table ([{section}] with key = value lines)"
            )
        values = {
            k: _value(f"{section}.{k}", given.get(k), p, missing=k not in given)
            for k, p in fixed.items()
        }
        extra: Mapping[str, Param] = {}
        if section in SELECTORS:
            selector = SELECTORS[section]
            entries = catalog.get(section, {})
            choice = values[selector]
            if choice not in entries:
                raise ConfigError(
                    f"{section}.{selector} = {_show(choice)}: unknown {section}; "
                    f"allowed: {_join(list(entries))}"
                )
            extra = entries[choice]()
            if section in SUBSELECTORS:
                key, prefix = SUBSELECTORS[section]
                if values[key] not in entries:
                    raise ConfigError(
                        f"{section}.{key} = {_show(values[key])}: unknown {section}; "
                        f"allowed: {_join(list(entries))}"
                    )
                extra = {**extra, **{prefix + k: p for k, p in entries[values[key]]().items()}}
        unknown = [f"{section}.{k}" for k in given if k not in fixed and k not in extra]
        if unknown:
            key = unknown[0].split(".", 1)[1]
            what = ""
            if section in SELECTORS:  # say whose options these are ("none"'s too)
                what = f" for {section} {_show(values[SELECTORS[section]])}"
                sub = SUBSELECTORS.get(section)
                if sub is not None and key.startswith(sub[1]):  # not the uplink's options
                    what = f" for {section}.{sub[0]} = {_show(values[sub[0]])}"
            named = ", ".join(f"'{k}'" for k in unknown)
            raise UnknownKey(
                unknown[0],
                f"unknown key{'s' if len(unknown) > 1 else ''} {named}{what}; allowed in "
                f"[{section}]: {', '.join([*fixed, *extra])}",
                unknown,
            )
        for k, p in extra.items():
            v = _value(f"{section}.{k}", given.get(k), p, missing=k not in given)
            if v is not None:
                values[k] = v
        out[section] = values
        schema[section] = {**fixed, **extra}
    data_parallel = list(catalog.get(UNSAMPLED, {}))
    _check_across(out, sampled=out["algorithm"]["name"] not in data_parallel)
    _check_kind(raw, out, schema, data_parallel)
    return Config(out)


UNSAMPLED = "unsampled_algorithms"
"""A catalog key naming the algorithms that train every client (worker) at every step: the
data-parallel ones, for which ``[sampling]`` means nothing: it is not checked, and refused
when set (see :data:`FEDERATED_ONLY`)."""

FEDERATED_ONLY = (
    "rounds",  # a federated run counts rounds; a data-parallel one counts parallel.steps
    "checkpoint_every",  # in rounds; data-parallel runs use parallel.checkpoint_every (steps)
    "client.",  # a round's local training per client; workers step by parallel.batch_size
    "sampling.",  # which clients join a round; every data-parallel worker joins every step
    "eval.every",  # counted in rounds; data-parallel runs use parallel.eval_every (steps)
    "runtime.vectorize",  # trains a round's sampled clients together (vmap)
    "runtime.memory_budget_mb",  # bounds how many clients runtime.vectorize trains at once
    "compression.downlink",  # the server's broadcast to the clients, and its downlink_*
    # options (this prefix matches both): the data-parallel methods send no such broadcast
)
"""Dotted prefixes of the keys only federated algorithms read (``"client."``: the whole
table). :data:`PARALLEL_ONLY` is the other way round. Everything else is read by both kinds."""

PARALLEL_ONLY = (
    "parallel.",
    "network.codec_seconds_per_element",  # charged per data-parallel exchange (shoal.cost)
)
"""Dotted prefixes of the keys only data-parallel algorithms read."""


def _check_kind(
    raw: Mapping[str, Any],
    cfg: dict[str, Any],
    schema: Mapping[str, Mapping[str, Param]],
    data_parallel: Sequence[str],
) -> None:
    """Refuse a key that ``raw`` gives and the chosen algorithm's kind would silently ignore.

    A key at its default does not count as given: it changes nothing whichever kind runs. That
    keeps working a run folder's ``config.toml`` (written with every default filled in, both
    kinds' keys, and re-read by ``--resume``) and a file that spells out every default
    (``examples/fedavg_mnist5k.toml``); what is refused is a value the run would not use.
    """
    name = cfg["algorithm"]["name"]
    unused = FEDERATED_ONLY if name in data_parallel else PARALLEL_ONLY
    # Schema order (a table's own options sorted), so the same key is always reported first.
    given: list[tuple[str, Param | None]] = [(key, TOP[key]) for key in TOP if key in raw]
    for section, fixed in SECTIONS.items():
        table = raw.get(section, {})
        keys = [*(k for k in fixed if k in table), *sorted(set(table) - set(fixed))]
        given += [(f"{section}.{k}", schema[section].get(k)) for k in keys]
    for key, param in given:
        section, _, k = key.rpartition(".")
        at_default = param is not None and (cfg[section] if section else cfg)[k] == param.default
        if at_default or not key.startswith(unused):
            continue
        if name in data_parallel:
            raise ConfigError(
                f"{key} is set, but algorithm.name = {_show(name)} is data-parallel: it runs "
                "[parallel] steps (parallel.steps, parallel.batch_size, parallel.eval_every), "
                f"not rounds with [client] and [sampling]. Remove {key}."
            )
        raise ConfigError(
            f"{key} is set, but algorithm.name = {_show(name)} is federated: it runs rounds "
            f"with [client] and [sampling]; {key} applies to the data-parallel algorithms "
            f"({_join(data_parallel)}) only. Remove it or pick one of those."
        )


def _check_across(cfg: dict[str, Any], sampled: bool = True) -> None:
    """Checks that involve more than one key."""
    part, client, sampling = cfg["partition"], cfg["client"], cfg["sampling"]
    if part["num_clients"] == 0 and part["scheme"] != "natural":
        raise ConfigError(
            f"partition.num_clients = 0: must be >= 1 (0 means one client per user and works "
            f'only with scheme "natural", not {_show(part["scheme"])})'
        )
    if client["min_epochs"] > client["epochs"]:
        raise ConfigError(
            f"client.min_epochs = {client['min_epochs']}: must be <= client.epochs = "
            f"{client['epochs']}"
        )
    # Both count epochs, which a fixed number of local steps does not have (TrainConfig refuses
    # them too, without naming the keys).
    steps, fraction = client["steps"], sampling["straggler_fraction"]
    if sampled and steps and client["epochs"] != 1:  # [client] is moot for data-parallel
        raise ConfigError(
            f"client.steps = {steps} with client.epochs = {client['epochs']}: fixed steps "
            "replace epochs, which would be ignored; leave client.epochs at 1, or set "
            "client.steps = 0"
        )
    if steps and client["min_epochs"]:
        raise ConfigError(
            f"client.steps = {steps} with client.min_epochs = {client['min_epochs']}: "
            "min_epochs draws each client's epochs, and fixed steps have none; set one of them "
            "to 0"
        )
    if steps and fraction > 0 and not sampling["drop_stragglers"]:
        raise ConfigError(
            f"client.steps = {steps} with sampling.straggler_fraction = {fraction}: a straggler "
            "runs fewer local epochs, and fixed steps have none; set client.steps = 0, or "
            "sampling.drop_stragglers = true"
        )
    n, m = part["num_clients"], sampling["clients_per_round"]
    if sampled and sampling["drop_stragglers"] and fraction and not stragglers_keep(m, fraction):
        raise ConfigError(
            f"sampling.straggler_fraction = {fraction} with sampling.drop_stragglers = true "
            f"drops all {m} clients sampled each round (it keeps round({m} x (1 - "
            f"{fraction})) = 0): nothing would train; lower the fraction or raise "
            "sampling.clients_per_round"
        )
    if sampled and n and m > n and not sampling["replace"]:
        raise ConfigError(
            f"sampling.clients_per_round = {m}: must be <= partition.num_clients = {n} "
            "(or set sampling.replace = true)"
        )
    comp = cfg["compression"]
    if comp["error_feedback"] and comp["name"] == "identity":
        raise ConfigError(
            'compression.error_feedback = true with compression.name = "identity": nothing is '
            "left out of the message, so there is nothing to feed back; name a compressor, or "
            "remove error_feedback"
        )
    data_dir = cfg["data"]["dir"]
    if data_dir and not Path(data_dir).expanduser().exists():
        raise ConfigError(
            f"data.dir = {_show(data_dir)}: no such file or folder (relative paths are relative "
            "to the current directory)"
        )


def check_num_clients(cfg: Config, num_clients: int) -> None:
    """The sampling check again, once the data has fixed the number of clients."""
    m = cfg["sampling.clients_per_round"]
    if m > num_clients and not cfg["sampling.replace"]:
        raise ConfigError(
            f"sampling.clients_per_round = {m}: must be <= the {num_clients} clients "
            "(or set sampling.replace = true)"
        )


# ----------------------------------------------------------------------------- reading


def loads(text: str, source: str = "config") -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes a one-line :class:`ConfigError`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None


def load(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into plain dicts (not yet validated: see :func:`resolve`)."""
    path = Path(path)
    try:  # utf-8-sig: a byte-order mark (Windows editors write one) was "Invalid statement"
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as a TOML file ({e})") from None
    return loads(text, str(path))


def parse_value(text: str) -> Any:
    r"""A ``--set`` value: parsed as a TOML value (``3``, ``0.1``, ``true``, ``[1, 2]``,
    ``"x"``), else taken as a plain string (``mnist``, ``../data``). A value that opens a
    TOML string, array or table but is not one is refused: ``"C:\data"`` (``\d`` is no TOML
    escape) was kept as a path with its quotes in it."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
        plain = text.strip()
        if plain[:1] in ('"', "'", "[", "{"):
            why = str(e).partition(" (at line")[0]
            hint = ""
            if plain.startswith('"') and "\\" in plain:
                hint = (
                    "; in double quotes a backslash starts an escape: put a path in single "
                    "quotes ('C:\\data') or leave the quotes out"
                )
            raise ConfigError(f"{plain} is not a TOML value ({why}){hint}") from None
        return plain


def apply_overrides(
    raw: Mapping[str, Any], assignments: Sequence[str], unset: Sequence[str] = ()
) -> dict[str, Any]:
    """A copy of ``raw`` without the ``unset`` keys (``key`` or ``section.key``), then with
    ``key=value`` or ``section.key=value`` assignments applied.

    Unsetting is how a key the file sets goes when ``--set`` switches a name whose options
    differ (``--set compression.name=qsgd --unset compression.ratio``); a key the config does
    not set is refused, as a typo would be.
    """
    out = copy.deepcopy(dict(raw))
    for key in unset:
        *path, name = key.strip().split(".")
        table = out if not path else out.get(path[0]) if len(path) == 1 else None  # no a.b.c
        if not isinstance(table, dict) or name not in table:
            raise ConfigError(f"--unset {key!r}: the config sets no such key")
        del table[name]
    for item in assignments:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts) or len(parts) > 2:
            raise ConfigError(
                f"--set {item!r}: expected key=value or table.key=value, "
                "e.g. --set partition.alpha=0.1"
            )
        target = out
        if len(parts) == 2:
            target = out.setdefault(parts[0], {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item!r}: {parts[0]} is a value, not a table")
        try:
            value = parse_value(text)
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}") from None
        old = target.get(parts[-1])
        if isinstance(value, dict) and isinstance(old, dict):
            # --set 'compression={name="qsgd", levels=4}' sets those keys; replacing the table
            # dropped the file's other keys (error_feedback = true) without a word.
            old.update(value)
        else:
            target[parts[-1]] = value
    return out


def _set_keys(assignments: Sequence[str]) -> list[str]:
    """The dotted keys that ``assignments`` set (an inline table's each key)."""
    keys = []
    for item in assignments:
        key, _, text = item.partition("=")
        key = key.strip()
        try:
            value = parse_value(text)
        except ConfigError:
            value = None
        if isinstance(value, dict) and "." not in key:
            keys += [f"{key}.{k}" for k in value]
        keys.append(key)
    return keys


def _check_reselected(
    raw: Mapping[str, Any],
    overridden: Mapping[str, Any],
    set_keys: Sequence[str],
    unset: Sequence[str],
    catalog: Catalog,
    source: str,
) -> None:
    """A ``--set`` that picks another name (profile, algorithm, ...) for a table whose keys the
    file sets at the old name's defaults: those defaults would stay, silently. A run's
    ``config.toml`` writes every default out, so ``--set network.profile=4g`` on a wifi run's
    file kept wifi's latency and bandwidths."""
    for section, selector in SELECTORS.items():
        given = raw.get(section)
        if f"{section}.{selector}" not in set_keys or not isinstance(given, dict):
            continue
        entries = catalog.get(section, {})
        old_name = given.get(selector, SECTIONS[section][selector].default)
        new_name = overridden.get(section, {}).get(selector)
        if old_name not in entries or new_name not in entries or new_name == old_name:
            continue
        old_params, new_params = entries[old_name](), entries[new_name]()
        stale = []
        for key, value in given.items():
            dotted = f"{section}.{key}"
            param, new = old_params.get(key), new_params.get(key)
            if param is None or new is None or dotted in set_keys or dotted in unset:
                continue  # a key the new name lacks is refused by resolve, with the same hint
            # (A value of another type for the new name is refused by resolve, with the hint.)
            fits = _fits(value, new.kind)
            if fits and value == param.default and new.default != param.default:
                stale.append(dotted)
        if stale:
            drop = " ".join(f"--unset {k}" for k in stale)
            raise ConfigError(
                f"{', '.join(stale)}, set in {source}, hold {section} {_show(old_name)}'s "
                f"defaults, and --set {section}.{selector}={new_name} picks another: {drop} "
                f"takes {_show(new_name)}'s, or --set them"
            )


def resolve_overridden(
    raw: Mapping[str, Any],
    assignments: Sequence[str],
    unset: Sequence[str],
    catalog: Catalog,
    source: str,
) -> Config:
    """:func:`resolve` of ``raw`` (read from ``source``) after the command line's overrides;
    an unknown key that ``source`` set, not ``--set``, names the way to drop it: typically
    an option of the name that ``--set`` replaced."""
    set_keys = _set_keys(assignments)
    overridden = apply_overrides(raw, assignments, unset)
    _check_reselected(raw, overridden, set_keys, unset, catalog, source)
    try:
        return resolve(overridden, catalog)
    except (UnknownKey, BadValue) as e:
        # an unknown table is named alone (--set dat.name=x: e.key is "dat")
        if any(e.key in (k, k.split(".")[0]) for k in set_keys):
            raise
        # A value the file set for the old name (mlp's hidden = [200, 200] under char_lstm):
        # only a --set of its table's name makes it the command line's mistake to fix.
        renamed = f"{e.key.rpartition('.')[0]}.name" in set_keys
        if isinstance(e, BadValue) and not renamed:
            raise
        # The file's keys only: a --set typo among them is the command line's to fix.
        keys = [k for k in e.keys if k not in set_keys] if isinstance(e, UnknownKey) else [e.key]
        drop = " ".join(f"--unset {k}" for k in keys)
        them = "them" if len(keys) > 1 else "it"
        raise ConfigError(f"{e} (set in {source}: {drop} drops {them})") from None


# ----------------------------------------------------------------------------- writing


def _toml_str(s: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-tripping form; always has "." or "e"
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a TOML value")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def dumps(cfg: Config, header: str = "") -> str:
    """The config as TOML: top-level keys, then one table per section (a two-level writer)."""
    lines = [f"# {line}" for line in header.splitlines()]
    tables = []
    for key, value in cfg.values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for name, table in tables:
        lines += ["", f"[{_toml_key(name)}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
