"""From a resolved config to the objects :func:`shoal.train.train` takes.

Every random choice of the setup is keyed by the config's ``seed``: the dataset's own split
(digits, synthetic), the partition, the feature noise, the model's initial parameters and the
seed of a stochastic compressor (or DGC) that the config leaves unset; the rounds draw theirs
from ``(seed, round)`` inside :mod:`shoal.schedule`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoal.algorithms.base import Algorithm, LocalWork
from shoal.cli.registry import (
    ALGORITHMS,
    COMPRESSORS,
    DATA_ARGS,
    DATASETS,
    MODEL_ARGS,
    MODELS,
    NETWORKS,
    SCHEMES,
    call_factory,
    in_cache,
)
from shoal.compress import Compressor, Identity, error_feedback, identity
from shoal.config import SECTIONS, Config, ConfigError, check_num_clients
from shoal.cost import MBIT_S, CostModel, Heterogeneity, Network, alpha_beta
from shoal.data import ArrayDataset, FederatedDataset, default_cache_dir, feature_noise, fetch
from shoal.data.download import check_cached
from shoal.functional import ParamSpec, init_params
from shoal.runtime.base import Runtime
from shoal.runtime.dist import DistRuntime
from shoal.runtime.procgroup import DistContext, in_distributed_env
from shoal.runtime.sim import SimRuntime, resolve_device
from shoal.schedule import ClientSampler, Stragglers
from shoal.streams import FEATURE_NOISE, PARTITION, keyed_rng
from shoal.train import TrainConfig, check_sampling


@dataclass
class Experiment:
    """Everything one run needs; ``config`` has the data-dependent values filled in too."""

    config: Config
    data: FederatedDataset
    clients: list[np.ndarray]
    model: nn.Module
    init: torch.Tensor
    algorithm: Algorithm
    train_config: TrainConfig
    runtime: Runtime
    compressor: Compressor
    downlink: Compressor = field(default_factory=identity)
    network: CostModel | None = None


def cache_dir(cfg: Config) -> Path:
    given = cfg["data.cache_dir"]
    return Path(given).expanduser() if given else default_cache_dir()


def _data_root(cfg: Config) -> Path | None:
    """Where the dataset's files are: ``data.dir``, else the cache (fetching if allowed)."""
    name = cfg["data.name"]
    entry = DATASETS[name]
    # Keys that would be ignored were accepted silently: every file key for data that reads
    # no files, and the cache's keys beside data.dir, which wins.
    reads_none = entry.source in ("bundled", "generated")
    keys = ("dir", "cache_dir", "download") if reads_none else ("cache_dir", "download")
    for key in keys if reads_none or cfg["data.dir"] else ():
        value = cfg[f"data.{key}"]
        if value != SECTIONS["data"][key].default:
            shown = f'"{value}"' if isinstance(value, str) else str(value).lower()
            why = (
                f"{name} reads no files"
                if reads_none
                else f'data.dir = "{cfg["data.dir"]}" reads the files there, not the cache\'s'
            )
            raise ConfigError(f"data.{key} = {shown}: {why}; remove it")
    if reads_none:
        return None
    if cfg["data.dir"]:
        return Path(cfg["data.dir"]).expanduser()
    cache = cache_dir(cfg)
    if in_cache(name, cache):
        try:
            check_cached(name, cache / name)
        except ValueError as e:
            raise ConfigError(f'data.name = "{name}": {e}') from None
        return cache / name
    if entry.source == "prepared":
        raise ConfigError(
            f"data.dir is required for {name}: a folder prepared by LEAF's preprocess.sh "
            f"(with train/ and test/); `shoal data fetch {name}` downloads only the raw inputs"
        )
    if not cfg["data.download"]:
        raise ConfigError(
            f'data.name = "{name}": not in the cache folder {cache / name}; run `shoal data fetch '
            f"{name}`, set data.download = true, or point data.dir at a folder with its files"
        )
    return fetch(name, cache)  # a failed download is one line naming the file and the URL


def load_data(cfg: Config) -> FederatedDataset:
    name = cfg["data.name"]
    root = _data_root(cfg)
    try:
        return DATASETS[name].load(root, cfg.options("data"), cfg["seed"])
    except FileNotFoundError as e:
        key = "data.dir" if cfg["data.dir"] else "data.cache_dir"
        raise ConfigError(f"{key}: cannot read {name} from {root}: {e}") from None
    except (ValueError, EOFError, OSError) as e:  # a truncated or corrupt archive too
        if root is None:  # bundled or generated data: what it refused is the seed or an option
            given = [f"seed = {cfg['seed']}"]
            given += [f"data.{k} = {v!r}" for k, v in cfg.options("data").items()]
            raise ConfigError(f'data.name = "{name}" ({", ".join(given)}): {e}') from None
        raise ConfigError(f'data.name = "{name}": cannot read {root}: {e}') from None


def build_clients(
    cfg: Config, check_sampling: bool = True
) -> tuple[Config, FederatedDataset, list[np.ndarray]]:
    """The dataset and its partition; ``partition.num_clients = 0`` becomes the user count.
    ``check_sampling=False``: a data-parallel run, whose clients are all workers every step."""
    data = load_data(cfg)
    scheme = cfg["partition.scheme"]
    options = cfg.options("partition")
    partition = call_factory(
        "partition",
        f'partition.scheme = "{scheme}"',
        options,
        lambda: SCHEMES[scheme].build(options, data),
    )
    num_clients = cfg["partition.num_clients"]
    if scheme == "natural":
        assert data.natural_clients is not None  # the scheme's factory checked it
        users = len(data.natural_clients)
        if num_clients not in (0, users):
            raise ConfigError(
                f"partition.num_clients = {num_clients}: the natural split of {data.name} has "
                f"{users} users; set it to {users} or 0 (one client per user)"
            )
        num_clients = users
        cfg = cfg.replace("partition.num_clients", users)
    labels = data.train.y.numpy()
    keys = [*options, "num_clients"]
    clients = call_factory(
        "partition",
        f'partition.scheme = "{scheme}"',
        keys,
        lambda: partition(labels, num_clients, keyed_rng(cfg["seed"], PARTITION)),
    )
    empty = [k for k, c in enumerate(clients) if len(c) == 0]
    if empty:
        raise ConfigError(
            f"partition.num_clients = {num_clients}: {len(empty)} clients get no samples under "
            f'scheme "{scheme}" (client {empty[0]} first); use fewer clients or another scheme'
        )
    _warn_unheld_classes(scheme, labels, clients)
    if check_sampling:
        check_num_clients(cfg, len(clients))
    sigma = cfg["partition.feature_noise"]
    if sigma > 0:
        x = data.train.x
        if not x.is_floating_point():
            raise ConfigError(
                f"partition.feature_noise = {sigma}: {data.name} has token ids, not features"
            )
        noisy = feature_noise(x, clients, sigma, keyed_rng(cfg["seed"], FEATURE_NOISE))
        train = ArrayDataset(noisy, data.train.y, data.train.num_classes)
        data = dataclasses.replace(data, train=train)
    return cfg, data, clients


def _warn_unheld_classes(scheme: str, labels: np.ndarray, clients: list[np.ndarray]) -> None:
    """Warn when no client holds some class (the "classes" scheme with fewer clients than
    classes, usually): the run trains without it while the test set still scores it, so its
    accuracy is capped, and only ``shoal data show`` said so."""
    held = np.zeros(len(labels), dtype=bool)
    for c in clients:
        held[c] = True
    missing = np.setdiff1d(np.unique(labels), np.unique(labels[held]))
    if len(missing):
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        warnings.warn(
            f'partition.scheme = "{scheme}": no client holds class{"es" * (len(missing) > 1)} '
            f"{shown} ({int((~held).sum())} of {len(labels)} training samples unused), which "
            "the test set still scores; use more clients or another scheme (`shoal data show` "
            "shows the split)",
            stacklevel=3,
        )


def data_args(data: FederatedDataset) -> dict[str, int]:
    """Model sizes the data implies: features, channels, image side, classes, vocabulary."""
    x, k = data.train.x, data.train.num_classes
    shape = tuple(x.shape[1:])
    if not x.is_floating_point():
        return {"num_classes": k, "vocab_size": k}
    args = {"num_classes": k, "in_features": math.prod(shape)}
    if len(shape) == 3:
        args.update(in_channels=shape[0], image_size=shape[-1])
    return args


def build_model(cfg: Config, data: FederatedDataset) -> tuple[nn.Module, torch.Tensor]:
    name = cfg["model.name"]
    factory = MODELS[name]
    options = cfg.options("model")
    facts = data_args(data)
    wanted = DATA_ARGS & set(inspect.signature(factory).parameters)
    shape = list(data.train.x.shape[1:])
    missing = wanted - set(facts)
    if missing:
        raise ConfigError(
            f'model.name = "{name}": needs {", ".join(sorted(missing))}, which {data.name} '
            f"samples of shape {shape} do not have; pick a model for this data"
        )
    kwargs = {**options, **{k: facts[k] for k in wanted}}
    label = f'model.name = "{name}"'
    try:
        model, init = call_factory(
            "model", label, options, lambda: init_params(lambda: factory(**kwargs), cfg["seed"])
        )
    except RuntimeError as e:  # torch's allocator: a 36-line traceback for a typo's extra 0
        if "allocate" not in str(e) and not isinstance(e, torch.OutOfMemoryError):
            raise
        given = ", ".join(f"model.{k} = {v}" for k, v in options.items())
        asked = re.search(r"allocate (\d+) bytes", str(e))
        size = f" (one tensor of {int(asked[1]) / 2**30:.3g} GiB)" if asked else ""
        raise ConfigError(
            f"{label}{f' ({given})' if given else ''}: its parameters do not fit in memory{size}"
        ) from None
    try:
        with torch.no_grad():
            model(data.train.x[:2])
    except Exception as e:  # any shape or dtype mismatch: say which model and data disagree
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{label} does not fit {data.name} samples of shape {shape}: {detail}"
        ) from None
    return model, init


def model_facts(factory: Callable[..., Any], model: nn.Module) -> dict[str, Any]:
    """The arguments of ``factory`` that the model gives, not the config (PowerSGD's and
    DGC's tensor shapes: :data:`~shoal.cli.registry.MODEL_ARGS`)."""
    wanted = MODEL_ARGS & set(inspect.signature(factory).parameters)
    return {"shapes": ParamSpec.of(model).shapes} if wanted else {}


def run_seed(factory: Callable[..., Any], options: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """``{"seed": cfg["seed"]}`` when ``factory`` takes a ``seed`` the config leaves unset.

    A stochastic compressor's (or DGC's) draws then change with the run's ``seed`` like every
    other random choice; a factory default would give runs of different seeds the same
    rounding, masks and PowerSGD queries. ``compression.seed`` (``downlink_seed``,
    ``algorithm.seed``) still pins them."""
    takes = "seed" in inspect.signature(factory).parameters
    return {"seed": cfg["seed"]} if takes and "seed" not in options else {}


def build_compressor(cfg: Config, model: nn.Module, downlink: bool = False) -> Compressor:
    """The uplink compressor of ``[compression]``, or with ``downlink`` the downlink's
    (``downlink`` and its ``downlink_*`` options; never error feedback, which the downlink has
    built in); model-given arguments (shapes) filled in."""
    key, prefix = ("downlink", "downlink_") if downlink else ("name", "")
    name = cfg[f"compression.{key}"]
    factory = COMPRESSORS[name]
    options = cfg.options("compression", prefix)
    facts = {**model_facts(factory, model), **run_seed(factory, options, cfg)}
    if name == "top_k" and ("ratio" in options) == ("k" in options):
        # top_k's own "give exactly one of ratio= or k=" named Python arguments
        given = [f"compression.{prefix}{o}" for o in ("ratio", "k") if o in options]
        hint = f" (--unset one of {' and '.join(given)})" if given else ""
        raise ConfigError(
            f'compression.{key} = "top_k" needs exactly one of compression.{prefix}ratio and '
            f"compression.{prefix}k, got {len(given)}{hint}"
        )
    compressor = call_factory(
        "compression",
        f'compression.{key} = "{name}"',
        options,
        lambda: factory(**options, **facts),
        prefix,
    )
    k, d = options.get("k"), ParamSpec.of(model).num_params
    if k is not None and k > d:  # capped to d: every value, each with its index (more than dense)
        raise ConfigError(
            f"compression.{prefix}k = {k}: more than the model's {d:,} parameters; top-k would "
            "send every value with its index, more bytes than no compression"
        )
    if downlink or not cfg["compression.error_feedback"]:
        return compressor
    return error_feedback(compressor)


def build_network(cfg: Config) -> CostModel | None:
    """The cost model of ``[network]`` (None for ``profile = "none"``), seeded by ``seed``."""
    name = cfg["network.profile"]
    if NETWORKS[name] is None:
        return None
    o = cfg.options("network")
    latency = o["latency_ms"] / 1e3
    uplink = alpha_beta(latency, o["uplink_mbit_s"] * MBIT_S)
    downlink = alpha_beta(latency, o["downlink_mbit_s"] * MBIT_S)
    profile = NETWORKS[name]()  # type: ignore[misc]
    if (uplink, downlink) != (profile.uplink, profile.downlink):  # the summary names it so
        name += " (links set in [network])"
    spread = Heterogeneity(
        o["speed_sigma"],
        o["bandwidth_sigma"],
        o["straggler_probability"],
        o["straggler_slowdown"],
        seed=cfg["seed"],
    )
    return CostModel(
        Network(name, uplink, downlink),
        o["seconds_per_sample"],
        spread,
        codec_seconds_per_element=o["codec_seconds_per_element"],
    )


def distributed(cfg: Config) -> bool:
    """Whether this process is one worker of a distributed job (``runtime.kind``)."""
    kind = cfg["runtime.kind"]
    if kind == "dist" and not in_distributed_env():
        raise ConfigError(
            "runtime.kind = 'dist' needs the processes of a distributed job: start it with "
            "`shoal launch` or `torchrun`"
        )
    if kind == "sim" and in_distributed_env():
        # Every process would run the whole job and write the same run folder at once.
        raise ConfigError(
            "runtime.kind = 'sim' runs every client or worker in one process, and this is one "
            "process of a distributed job: run it with `shoal run`, or set runtime.kind = "
            "'auto' to spread it over the processes"
        )
    return kind == "dist" or (kind == "auto" and in_distributed_env())


def join_group(cfg: Config, join: Callable[[], DistContext]) -> DistContext:
    """``join()``: this process's place in the ``shoal launch`` / ``torchrun`` group. A device
    the machine cannot give each of its processes (``device = "cuda"`` with fewer GPUs than
    processes) is a config mistake, refused like the others (exit code 2)."""
    try:
        return join()
    except ValueError as e:
        raise ConfigError(f'device = "{cfg["device"]}": {e}') from None


def build(cfg: Config, *, progress: bool = True) -> Experiment:
    """Data, partition, model, algorithm and the train config, each checked against the config."""
    try:
        resolve_device(cfg["device"])
    except ValueError as e:
        raise ConfigError(f'device = "{cfg["device"]}": {e}') from None
    cfg, data, clients = build_clients(cfg)
    model, init = build_model(cfg, data)
    compressor = build_compressor(cfg, model)
    downlink = build_compressor(cfg, model, downlink=True)
    network = build_network(cfg)
    name = cfg["algorithm.name"]
    options = cfg.options("algorithm")
    facts = model_facts(ALGORITHMS[name], model)
    algorithm = call_factory(
        "algorithm",
        f'algorithm.name = "{name}"',
        [*options, "lr"],
        lambda: ALGORITHMS[name](lr=cfg["algorithm.lr"], **options, **facts),
    )
    own = getattr(algorithm, "default_compressor", None)
    if own is not None and isinstance(compressor, Identity):
        compressor = own  # the algorithm's own wire encoding, so its bytes are charged exactly
    c = cfg.values["client"]
    work = LocalWork(
        epochs=c["epochs"],
        batch_size=c["batch_size"] or None,
        steps=c["steps"] or None,
        min_epochs=c["min_epochs"] or None,
    )
    override = getattr(algorithm, "work_override", None)
    if override is not None:
        # The library warns (showing LocalWork reprs); a config refuses a key it would ignore.
        if asked := [k for k, p in SECTIONS["client"].items() if c[k] != p.default]:
            # In the config's words: None is 0 there (batch_size 0 = the whole local data).
            own = ", ".join(f"{k} = {getattr(override, k) or 0}" for k in SECTIONS["client"])
            raise ConfigError(
                f"client.{asked[0]} = {c[asked[0]]}: algorithm.name = "
                f'"{cfg["algorithm.name"]}" fixes its own local work ({own}), so [client] '
                "would be ignored; remove it"
            )
        work = override
    s = cfg.values["sampling"]
    train_config = TrainConfig(
        rounds=cfg["rounds"],
        sampler=ClientSampler(s["clients_per_round"], s["replace"], s["weighted"]),
        work=work,
        stragglers=Stragglers(s["straggler_fraction"], s["drop_stragglers"]),
        weighting=s["weighting"],
        seed=cfg["seed"],
        eval_every=cfg["eval.every"],
        eval_batch_size=cfg["eval.batch_size"],
        checkpoint_every=cfg["checkpoint_every"],
        device=cfg["device"],
        progress=progress,
    )
    try:  # refused here, not by train(): every `shoal launch` worker exits as a config error
        check_sampling(train_config, algorithm)
    except ValueError as e:
        raise ConfigError(f"sampling.replace = true: {e}") from None
    sim = SimRuntime(cfg["runtime.vectorize"], cfg["runtime.memory_budget_mb"])
    runtime: Runtime = sim
    if distributed(cfg):
        runtime = DistRuntime(sim, device=cfg["device"], timeout_s=cfg["runtime.timeout_s"])
        # Joined now (the runtime would join at its first round) so that a device it refuses
        # is a config error.
        join_group(cfg, lambda: runtime.ctx)
    return Experiment(
        cfg,
        data,
        clients,
        model,
        init,
        algorithm,
        train_config,
        runtime,
        compressor,
        downlink,
        network,
    )
