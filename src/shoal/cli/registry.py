"""The one name -> factory mapping of Shoal: datasets, partitions, models, algorithms and
compressors.

The library takes objects (``fedprox(lr, mu)``, ``dirichlet(alpha)``, ``mlp(...)``,
``top_k(ratio)``); only here do the names a config file uses meet them. Model, algorithm and
compressor options are read off the factory's signature, so a new keyword argument is settable
from a config without touching this file.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from shoal import algorithms, compress, cost, models, parallel
from shoal.config import REQUIRED, UNSAMPLED, Catalog, ConfigError, Param, describe
from shoal.data import (
    CATALOGUE,
    FederatedDataset,
    Partition,
    classes_per_client,
    dirichlet,
    hsu_dirichlet,
    iid,
    load_cifar10,
    load_cifar100,
    load_digits,
    load_femnist,
    load_mnist_family,
    load_shakespeare,
    natural,
    quantity_skew,
    shards,
    synthetic,
)

Options = dict[str, Any]


@dataclass(frozen=True)
class Dataset:
    """How to get and read one dataset.

    ``source``: ``"bundled"`` (ships with a dependency), ``"generated"``, ``"download"``
    (``shoal data fetch`` gets every file) or ``"prepared"`` (LEAF's scripts must build it).
    ``load(root, options, seed)``; ``root`` is None for bundled and generated data.
    """

    load: Callable[[Path | None, Options, int], FederatedDataset]
    source: str
    about: str
    options: dict[str, Param] = field(default_factory=dict)
    natural: bool = False


def _need(root: Path | None) -> Path:
    assert root is not None, "files-backed datasets get a root folder"
    return root


def _emnist(root: Path | None, opts: Options, seed: int) -> FederatedDataset:
    root = _need(root)
    if root.is_dir() and (root / "gzip.zip").is_file():
        root = root / "gzip.zip"  # the bundle as fetched, read without extracting
    return load_mnist_family(root, f"emnist-{opts['split']}-", name="emnist")


def _synthetic(opts: Options, seed: int) -> FederatedDataset:
    # Synthetic-IID has no alpha or beta: set, they were ignored without a word.
    defaults = DATASETS["synthetic"].options
    if opts["iid"] and (set_ := [k for k in ("alpha", "beta") if opts[k] != defaults[k].default]):
        raise ConfigError(
            f"data.iid = true shares one model and feature distribution, so "
            f"{' and '.join(f'data.{k}' for k in set_)} would be ignored; unset "
            f"{'them' if len(set_) > 1 else 'it'}, or set data.iid = false"
        )
    return synthetic(
        opts["alpha"], opts["beta"], num_users=opts["num_users"], iid=opts["iid"], seed=seed
    )


_EMNIST_SPLITS = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")

DATASETS: dict[str, Dataset] = {
    "digits": Dataset(
        lambda root, o, seed: load_digits(test_fraction=o["test_fraction"], seed=seed),
        "bundled",
        "scikit-learn's 8x8 digits, 1,797 images",
        {"test_fraction": Param(float, 0.2, lambda v: 0 < v < 1, "in (0, 1)")},
    ),
    "synthetic": Dataset(
        lambda root, o, seed: _synthetic(o, seed),
        "generated",
        "FedProx's Synthetic(alpha, beta), one natural client per user",
        {
            "alpha": Param(float, 1.0, lambda v: 0 <= v < math.inf, ">= 0"),
            "beta": Param(float, 1.0, lambda v: 0 <= v < math.inf, ">= 0"),
            "iid": Param(bool, False),
            "num_users": Param(int, 30, lambda v: v >= 1, ">= 1"),
        },
        natural=True,
    ),
    "mnist": Dataset(
        lambda root, o, seed: load_mnist_family(_need(root), name="mnist", num_classes=10),
        "download",
        "MNIST digits, IDX files",
    ),
    "fashion_mnist": Dataset(
        lambda root, o, seed: load_mnist_family(_need(root), name="fashion_mnist", num_classes=10),
        "download",
        "Fashion-MNIST, IDX files",
    ),
    "emnist": Dataset(
        _emnist,
        "download",
        "EMNIST (NIST gzip bundle), one split",
        {"split": Param(str, "balanced", choices=_EMNIST_SPLITS)},
    ),
    "cifar10": Dataset(
        lambda root, o, seed: load_cifar10(_need(root)), "download", "CIFAR-10, python archive"
    ),
    "cifar100": Dataset(
        lambda root, o, seed: load_cifar100(_need(root), coarse=o["coarse"]),
        "download",
        "CIFAR-100, python archive",
        {"coarse": Param(bool, False)},
    ),
    "femnist": Dataset(
        lambda root, o, seed: load_femnist(_need(root)),
        "prepared",
        "LEAF FEMNIST, one natural client per writer",
        natural=True,
    ),
    "shakespeare": Dataset(
        lambda root, o, seed: load_shakespeare(_need(root), seq_len=o["seq_len"]),
        "prepared",
        "LEAF Shakespeare, one natural client per role",
        {"seq_len": Param(int, 80, lambda v: v >= 1, ">= 1")},
        natural=True,
    ),
}


def in_cache(name: str, cache_dir: Path) -> bool:
    """Whether the cache folder holds the dataset (every catalogue file, or LEAF's output)."""
    folder = cache_dir / name
    if DATASETS[name].source == "prepared":
        return (folder / "train").is_dir() and (folder / "test").is_dir()
    return all((folder / f.filename).is_file() for f in CATALOGUE.get(name, ()))


# ----------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class Scheme:
    """``build(options, data)`` returns the partition function."""

    build: Callable[[Options, FederatedDataset], Partition]
    options: dict[str, Param] = field(default_factory=dict)


def _natural(o: Options, data: FederatedDataset) -> Partition:
    if data.natural_clients is None:
        have = [n for n, d in DATASETS.items() if d.natural]
        raise ConfigError(
            f'partition.scheme = "natural": {data.name} has no natural per-user split; use '
            f"another scheme or a dataset that has one ({', '.join(have)})"
        )
    return natural(data.natural_clients)


# A Dirichlet concentration: the label skew's alpha, the quantity skew's beta.
_CONCENTRATION = Param(float, 0.5, lambda v: 0 < v < math.inf, "a finite number > 0")
# Every client gets data. NIID-Bench's rule is 10 (Python's dirichlet() default), which is
# infeasible for the default digits data over 100 clients (~14 images each): set it per config.
_MIN_SIZE = Param(int, 1, lambda v: v >= 0, ">= 0")

SCHEMES: dict[str, Scheme] = {
    "iid": Scheme(lambda o, d: iid()),
    "dirichlet": Scheme(
        lambda o, d: dirichlet(o["alpha"], o["min_size"]),
        {"alpha": _CONCENTRATION, "min_size": _MIN_SIZE},
    ),
    "hsu_dirichlet": Scheme(
        lambda o, d: hsu_dirichlet(o["alpha"], o["samples_per_client"] or None),
        {
            "alpha": _CONCENTRATION,
            "samples_per_client": Param(int, 0, lambda v: v >= 0, ">= 0 (0 = N // num_clients)"),
        },
    ),
    "shards": Scheme(
        lambda o, d: shards(o["shards_per_client"]),
        {"shards_per_client": Param(int, 2, lambda v: v >= 1, ">= 1")},
    ),
    "classes": Scheme(
        lambda o, d: classes_per_client(o["classes_per_client"]),
        {"classes_per_client": Param(int, 2, lambda v: v >= 1, ">= 1")},
    ),
    "quantity": Scheme(
        lambda o, d: quantity_skew(o["beta"], o["min_size"]),
        {"beta": _CONCENTRATION, "min_size": _MIN_SIZE},
    ),
    "natural": Scheme(_natural),
}

# ----------------------------------------------------------------------------- models, algorithms

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mclr": models.mclr,
    "mlp": models.mlp,
    "cnn": models.cnn,
    "resnet_small": models.resnet_small,
    "char_lstm": models.char_lstm,
}

DATA_ARGS = frozenset({"in_features", "in_channels", "image_size", "num_classes", "vocab_size"})
"""Model arguments that the data determines; a config may not set them."""

# Typed loosely because mypy does not accept the algorithms' frozen dataclasses as the Algorithm
# protocol, which declares ``name`` and ``lr`` settable (frozen fields are read-only).
ALGORITHMS: dict[str, Callable[..., Any]] = {
    "fedsgd": algorithms.fedsgd,
    "fedavg": algorithms.fedavg,
    "fedprox": algorithms.fedprox,
    "scaffold": algorithms.scaffold,
    "fedavgm": algorithms.fedavgm,
    "fedadagrad": algorithms.fedadagrad,
    "fedadam": algorithms.fedadam,
    "fedyogi": algorithms.fedyogi,
    "fednova": algorithms.fednova,
}

PARALLEL: dict[str, Callable[..., Any]] = {
    "sync_sgd": parallel.sync_sgd,
    "dgc": parallel.dgc,
    "local_sgd": parallel.local_sgd,
    "dpsgd": parallel.dpsgd,
    "sgp": parallel.sgp,
    "easgd": parallel.easgd,
    "eamsgd": parallel.eamsgd,
}
"""Data-parallel and decentralized methods (:mod:`shoal.parallel`): ``[algorithm] name`` picks
them like the federated ones; the run is then configured by ``[parallel]``. Their topology
and compressor come from ``[parallel] topology`` and ``[compression]``."""
PARALLEL_ARGS = frozenset({"lr", "topology", "compressor"})


COMPRESSORS: dict[str, Callable[..., compress.Compressor]] = {
    "identity": compress.identity,
    "fp16": compress.fp16,
    "bf16": compress.bf16,
    "top_k": compress.top_k,
    "random_k": compress.random_k,
    "threshold": compress.threshold,
    "dgc_top_k": compress.dgc_top_k,
    "qsgd": compress.qsgd,
    "terngrad": compress.terngrad,
    "scaled_sign": compress.scaled_sign,
    "natural_compression": compress.natural_compression,
    "powersgd": compress.powersgd,
    "count_sketch": compress.count_sketch,
    "lgreco_top_k": compress.lgreco_top_k,
    "lgreco_qsgd": compress.lgreco_qsgd,
    "lgreco_powersgd": compress.lgreco_powersgd,
}
"""``[compression] name``; ``error_feedback = true`` wraps the result in
:func:`shoal.compress.error_feedback`."""

MODEL_ARGS = frozenset({"shapes"})
"""Compressor arguments that the model determines (PowerSGD's matrix shapes)."""

NETWORKS: dict[str, Callable[[], cost.Network] | None] = {
    "none": None,
    "datacenter": cost.datacenter,
    "ethernet_1g": cost.ethernet_1g,
    "wifi": cost.wifi,
    "4g": cost.cellular_4g,
}
"""``[network] profile``: a device profile of :mod:`shoal.cost` (``none``: no simulated time)."""


def network_params(name: str) -> Mapping[str, Param]:
    """``[network]``'s keys for a profile, its own values as the defaults (in ms and Mbit/s)."""
    factory = NETWORKS[name]
    if factory is None:
        return {}
    net = factory()
    non_negative, positive = (lambda v: 0 <= v < math.inf), (lambda v: 0 < v < math.inf)

    def sigma(v: float) -> bool:
        return 0 <= v <= cost.MAX_SIGMA

    return {
        # One latency for both directions (every profile has one); the API takes two.
        "latency_ms": Param(float, round(net.uplink.latency_s * 1e3, 9), non_negative, ">= 0"),
        "uplink_mbit_s": Param(
            float, round(net.uplink.bandwidth_Bps / cost.MBIT_S, 9), positive, "> 0"
        ),
        "downlink_mbit_s": Param(
            float, round(net.downlink.bandwidth_Bps / cost.MBIT_S, 9), positive, "> 0"
        ),
        "seconds_per_sample": Param(float, 0.0, non_negative, ">= 0 (0 = count only the network)"),
        "codec_seconds_per_element": Param(
            float, 0.0, non_negative, ">= 0 (0 = compressing takes no time; data-parallel only)"
        ),
        "speed_sigma": Param(float, 0.0, sigma, f"in [0, {cost.MAX_SIGMA:g}]"),
        "bandwidth_sigma": Param(float, 0.0, sigma, f"in [0, {cost.MAX_SIGMA:g}]"),
        "straggler_probability": Param(float, 0.0, lambda v: 0 <= v <= 1, "in [0, 1]"),
        "straggler_slowdown": Param(float, 10.0, lambda v: 1 <= v < math.inf, ">= 1"),
    }


@functools.cache
def signature_params(factory: Callable[..., Any], skip: frozenset[str]) -> Mapping[str, Param]:
    """The factory's keyword arguments that a TOML value can express, as config params."""
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    out: dict[str, Param] = {}
    for name, p in inspect.signature(factory).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = REQUIRED if p.default is p.empty else p.default
        kind = hints.get(name, type(default) if default not in (REQUIRED, None) else Any)
        if describe(kind) is None:
            continue  # an object (a compressor, ...): not something a config file can say
        if name == "seed":  # unset: the run's own seed applies (shoal.cli.build.run_seed)
            default = None
        out[name] = Param(kind, list(default) if isinstance(default, tuple) else default)
    return out


def _static(options: dict[str, Param]) -> Callable[[], Mapping[str, Param]]:
    return lambda: options


CATALOG: Catalog = {
    "data": {n: _static(d.options) for n, d in DATASETS.items()},
    "partition": {n: _static(s.options) for n, s in SCHEMES.items()},
    "model": {n: functools.partial(signature_params, f, DATA_ARGS) for n, f in MODELS.items()},
    "algorithm": {
        **{
            n: functools.partial(signature_params, f, frozenset({"lr"}))
            for n, f in ALGORITHMS.items()
        },
        **{
            n: functools.partial(signature_params, f, PARALLEL_ARGS | MODEL_ARGS)
            for n, f in PARALLEL.items()
        },
    },
    "compression": {
        n: functools.partial(signature_params, f, MODEL_ARGS) for n, f in COMPRESSORS.items()
    },
    "network": {n: functools.partial(network_params, n) for n in NETWORKS},
    UNSAMPLED: {n: dict for n in PARALLEL},
}
"""What :func:`shoal.config.resolve` needs to check the name-dependent keys."""


def call_factory(
    section: str, label: str, keys: Collection[str], fn: Callable[[], Any], prefix: str = ""
) -> Any:
    """Run a factory; its ``ValueError``/``TypeError`` becomes a one-line :class:`ConfigError`.

    Library messages usually start with the argument's name ("mu must be ..."), sometimes
    after the factory's name ("top_k: ratio must be ..."); when that is one of the config
    ``keys`` it is written as the dotted key (``algorithm.mu must be ...``), with ``prefix``
    before the key when the config spells it so (``compression.downlink_ratio``).
    """
    try:
        return fn()
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        lines = str(e).strip().splitlines()
        msg = lines[0] if lines else type(e).__name__
        who, sep, rest = msg.partition(": ")
        if msg.split(" ", 1)[0] in keys:
            msg = f"{section}.{prefix}{msg}"
        elif sep and " " not in who and rest.split(" ", 1)[0] in keys:
            msg = f"{section}.{prefix}{rest}"
        raise ConfigError(f"{label}: {msg}") from None
