"""The one driver loop: ``train(model, data, clients, algorithm, config) -> TrainResult``.

Each round: sample clients, decide their local work (stragglers included), let the runtime
train them and aggregate their messages, apply the server update, evaluate, log a metrics
row, and checkpoint. Every random choice is keyed by ``(seed, round)``, and the checkpoint
holds everything else (parameters, server and client state, the metrics so far), so a run
killed at any point and resumed with ``resume=True`` ends with the same model and metrics as
an uninterrupted run (only ``wall_seconds`` differs). A run that *finished* at a shorter
``rounds`` and is resumed to train further has the same model, but with ``eval_every > 1``
its rows keep the evaluation of the shorter run's last round, which the longer run skips.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoal.aggregate.base import Aggregator
from shoal.aggregate.mean import mean
from shoal.aggregate.stateful import warn_if_unkept
from shoal.algorithms.base import Algorithm, LocalWork
from shoal.attacks.byzantine import Byzantine
from shoal.attacks.label_flip import LabelFlip
from shoal.attacks.mimic import Mimic
from shoal.checks import (
    a_kind,
    check_counts,
    check_flag,
    check_instance,
    check_seed,
    stragglers_keep,
)
from shoal.compress.base import CONTRACTIVE_EXAMPLES, Compressor, identity, is_contractive
from shoal.compress.feedback import without_feedback
from shoal.cost import CostModel
from shoal.data.types import FederatedDataset
from shoal.evaluate import distribution, per_client_accuracy, pooled
from shoal.files import (
    append_metrics,
    atomic_save,
    check_checkpoint_dtype,
    environment,
    load_checkpoint,
    replace_text,
    split_digest,
    warn_setup_differs,
    write_metrics,
)
from shoal.functional import (
    LossFn,
    ParamSpec,
    check_model,
    check_run_inputs,
    cross_entropy,
    start_params,
)
from shoal.progress import progress_bar
from shoal.runtime.base import ClientStore, RoundTask, Runtime
from shoal.runtime.broadcast import DownlinkState, broadcast, check_downlink
from shoal.runtime.sim import SimRuntime, resolve_device
from shoal.schedule import ClientSampler, Stragglers, make_plan

METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
MODEL = "model.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a federated run that is not an object (model, data, algorithm)."""

    rounds: int
    sampler: ClientSampler
    work: LocalWork = field(default_factory=LocalWork)
    stragglers: Stragglers = field(default_factory=Stragglers)
    weighting: str = "samples"
    """Aggregation weights: ``"samples"`` (``n_k``, FedAvg) or ``"uniform"``."""
    seed: int = 0
    eval_every: int = 1
    eval_batch_size: int = 256
    client_eval: bool = True
    """Evaluate the final model on every client's data for ``summary.json``'s distribution."""
    eval_train: bool = False
    """Also log the global model's loss/accuracy on all training data (FedProx's plots)."""
    device: str = "auto"
    progress: bool = True
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        check_instance(self.sampler, ClientSampler, "sampler", " (e.g. ClientSampler(10))")
        check_instance(self.work, LocalWork, "work")
        check_instance(self.stragglers, Stragglers, "stragglers")
        check_counts(self, ("rounds", "eval_every", "eval_batch_size", "checkpoint_every"))
        for flag in ("client_eval", "eval_train", "progress"):  # "False" is true to Python
            check_flag(getattr(self, flag), flag)
        if not isinstance(self.device, (str, torch.device)):
            raise TypeError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        m, fraction = self.sampler.clients_per_round, self.stragglers.fraction
        if self.stragglers.drop and fraction > 0 and stragglers_keep(m, fraction) == 0:
            raise ValueError(
                f"stragglers: fraction {fraction} of the {m} clients sampled a round leaves "
                "none that is not dropped: nothing would train; lower the fraction or sample "
                "more clients"
            )
        # The seed keys every draw, through numpy's SeedSequence: one 32-bit word.
        check_seed(self.seed)
        if self.weighting not in ("samples", "uniform"):
            raise ValueError(f"weighting must be 'samples' or 'uniform', got {self.weighting!r}")
        if self.work.steps is not None and (
            self.stragglers.fraction > 0
            and not self.stragglers.drop
            or self.work.min_epochs is not None
        ):
            raise ValueError(
                "partial straggler work and min_epochs are counted in epochs; they cannot be "
                "combined with a fixed number of local steps (client.steps)"
            )


@dataclass
class TrainResult:
    """What :func:`train` returns: final parameters, their layout, metrics rows and summary."""

    params: torch.Tensor
    """Final global parameters, flat (load into a model with ``spec.load_into``)."""
    spec: ParamSpec
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


Callback = Callable[[dict[str, Any]], None]


def check_sampling(
    config: TrainConfig, algorithm: Algorithm, num_clients: int | None = None
) -> None:
    """Refuse sampling that would make ``algorithm`` silently wrong (``ValueError``); ``shoal
    run`` calls it while it builds the run, so a config asking for it is refused as one.
    With ``num_clients`` (``train`` gives it), a data-parallel algorithm's every worker must
    train every round: it was refused in its first server update, after a round's training."""
    sampler = config.sampler
    if getattr(sampler, "replace", False) and getattr(algorithm, "tracks", None):
        raise ValueError(
            f"{algorithm.name}: sampling with replacement can draw a client twice in a round; "
            "the server would add both of its control-variate changes while the client keeps "
            "one (c would stop being the mean of the c_k): sample without replacement"
        )
    if getattr(sampler, "replace", False) and getattr(algorithm, "every_client_every_round", 0):
        raise ValueError(
            f"{algorithm.name} is data-parallel: every worker trains once every round, and "
            "sampling with replacement can draw one twice and leave another out; sample "
            "without replacement"
        )
    if num_clients is None or not getattr(algorithm, "every_client_every_round", False):
        return
    workers = getattr(algorithm, "num_workers", None)
    if workers is not None and workers != num_clients:
        raise ValueError(f"{algorithm.name}: num_workers={workers} but the run has {num_clients}")
    stragglers = config.stragglers
    m = sampler.clients_per_round
    dropped = stragglers.drop and stragglers_keep(m, stragglers.fraction) < m
    if m != num_clients or dropped:
        raise ValueError(
            f"{algorithm.name} is data-parallel: every worker must train every round, but "
            f"{m} of {num_clients} are sampled"
            f"{' and stragglers dropped' if dropped else ''} (set clients_per_round to the "
            "number of clients, and keep the stragglers)"
        )


def _warn_weighting(config: TrainConfig) -> None:
    """Weighted sampling and sample-weighted averaging count a client's size twice."""
    if getattr(config.sampler, "weighted", False) and config.weighting == "samples":
        warnings.warn(
            "sampling clients by size (weighted) already favours large clients; weighting by "
            "samples counts their size a second time (Li et al.'s unbiased scheme I samples "
            "weighted with replacement and averages uniformly)",
            stacklevel=3,
        )


def _check_tracked(algorithm: Algorithm, compressor: Compressor) -> None:
    """Warn when a message the clients track (SCAFFOLD's ``delta_c``, sent EF21-style: each
    client keeps what the server decoded) goes through a compressor that is not contractive:
    the tracked state can drift from the truth (QSGD with 4 levels took SCAFFOLD to chance)."""
    tracks = getattr(algorithm, "tracks", None)
    if tracks and is_contractive(without_feedback(compressor)) is False:
        warnings.warn(
            f"{algorithm.name} sends {', '.join(tracks)} through {compressor.name} and keeps "
            "what the server decoded of it; that compressor is not contractive, so the kept "
            f"state can drift and training diverge. Use a contractive compressor "
            f"({CONTRACTIVE_EXAMPLES}).",
            stacklevel=3,  # the caller of train(...)
        )


def _check_tracked_mean(algorithm: Algorithm, aggregator: Aggregator) -> None:
    """Warn when a tracked message (SCAFFOLD's ``delta_c``) is aggregated by a rule that is not
    a weighted mean: the server adds that rule's output to ``c`` while each client adds its own
    ``delta_c`` to ``c_k``, so ``c`` stops being the mean of the ``c_k`` and the corrections
    ``c - c_k`` no longer cancel (trimmed_mean(1), 6 of 6 clients: after 10 rounds ``c`` was
    0.096 away from that mean, twice its own size)."""
    tracks = getattr(algorithm, "tracks", None)
    if tracks and not aggregator.linear:
        warnings.warn(
            f"{algorithm.name} aggregates {', '.join(tracks)} with {type(aggregator).__name__}, "
            "which is not a weighted mean: the server's state then drifts from the mean of the "
            "clients' (SCAFFOLD's c from the mean of the c_k) and its corrections stop "
            "cancelling. Use the mean aggregator for it, or an algorithm without client state.",
            stacklevel=3,  # the caller of train(...)
        )


def _setup(
    algorithm: Algorithm,
    model: nn.Module,
    spec: ParamSpec,
    clients: list[np.ndarray],
    config: TrainConfig,
    aggregator: Aggregator,
    byzantine: Byzantine | None,
    compressor: Compressor,
    downlink: Compressor,
) -> dict[str, Any]:
    """What a run's checkpoint records of its setup, for a resume to be checked against."""
    sizes = np.array([len(c) for c in clients])
    attack = None if byzantine is None else f"{sorted(byzantine.clients)} {byzantine.behaviour!r}"
    return {
        "parameters": spec.num_params,
        "buffers and frozen parameters": spec.fixed_digest(model),
        "client sizes": sizes.astype(int).tolist(),
        "client split": split_digest(clients),  # another split of equal sizes (IID's, reseeded)
        "algorithm": repr(algorithm),
        # Another algorithm's server and client states start afresh: FedAdam's first moment
        # (scaled by 1 - beta1) went on as FedAvgM's momentum, silently, and SCAFFOLD found no
        # "c" in FedAvg's (a KeyError after a round of training).
        "algorithm class": type(algorithm).__qualname__,
        "seed": config.seed,
        "sampler": repr(config.sampler),
        "local work": repr(config.work),
        "stragglers": repr(config.stragglers),
        "weighting": config.weighting,
        # Keyed like `carried` below: a changed one starts its state afresh.
        "aggregator": repr(aggregator),
        "attack": attack,
        # Their per-client and broadcast states too: another compressor's failed in its first
        # round ("state must come from init"), and another seed's went on silently.
        "compressor": repr(compressor),
        "downlink": repr(downlink),
    }


def _check_resumed(
    out: Path, done: int, rounds: int, saved: dict[str, Any], setup: dict[str, Any]
) -> list[str]:
    """A resume trains further, from a checkpoint of the same setup. With fewer rounds than
    the checkpoint has, it returned that run's result unchanged, silently; with other clients
    or another algorithm it goes on from one run's state under another's setting, which may be
    meant (a lower learning rate from here on), so it warns. Returns the keys that differ."""
    if done > rounds:
        raise ValueError(
            f"cannot resume: the checkpoint in {out} is at round {done}, past rounds={rounds}; "
            "a resumed run can only train further"
        )
    named = str(saved.get("algorithm", "")).split("(", 1)[0]
    if "algorithm class" not in saved and named.isidentifier():
        # A checkpoint from before the class was recorded: its repr starts with it.
        saved = {**saved, "algorithm class": named}
    if saved.get("parameters", setup["parameters"]) != setup["parameters"]:
        raise ValueError(
            f"cannot resume: the checkpoint in {out} holds a model of {saved['parameters']} "
            f"parameters, this one has {setup['parameters']}"
        )

    def note(differ: list[str]) -> str:
        carried: list[str] = [
            k for k in ("aggregator", "attack", "compressor", "downlink") if k in differ
        ]
        if "algorithm class" in differ:
            carried.insert(0, "algorithm's server and client states")
        return f"; the new {' and '.join(carried)} start(s) afresh" if carried else ""

    return warn_setup_differs(out, saved, setup, stacklevel=3, note=note)  # train's caller


def _check_arguments(
    model: Any,
    data: Any,
    algorithm: Any,
    config: Any,
    runtime: Any,
    aggregator: Any,
    compressor: Any,
    downlink: Any,
    network: Any,
    byzantine: Any,
    init: Any,
    out_dir: Any,
    resume: Any,
    callback: Any,
) -> None:
    """``train``'s arguments, before any work. A wrong object failed later with an
    AttributeError that named neither the argument nor what it should be (``"mean"`` for
    ``mean()``, a ``Network`` for a ``CostModel``, the ``SimRuntime`` class), a callback only
    after round 1, and ``resume="False"`` continued the old run (a string is true)."""
    check_instance(model, nn.Module, "model")
    check_instance(data, FederatedDataset, "data")
    check_instance(config, TrainConfig, "config")
    for name, value, kind, hint in (
        ("algorithm", algorithm, Algorithm, " (e.g. fedavg(0.1))"),
        ("runtime", runtime, Runtime, " (SimRuntime() or DistRuntime())"),
        ("aggregator", aggregator, Aggregator, " (e.g. mean(), median())"),
        ("compressor", compressor, Compressor, " (e.g. top_k(0.01))"),
        ("downlink_compressor", downlink, Compressor, " (e.g. top_k(0.01))"),
        ("network", network, CostModel, " (e.g. CostModel(wifi()))"),
        ("byzantine", byzantine, Byzantine, " (see shoal.attacks.byzantine)"),
    ):
        # A class passes a protocol's attribute check: only instances are meant.
        if value is not None and (isinstance(value, type) or not isinstance(value, kind)):
            raise TypeError(f"{name} must be {a_kind(kind)}{hint}, got {value!r}")
    check_run_inputs(init, callback)
    if out_dir is not None and not str(out_dir).strip():  # Path("") is the current folder
        raise ValueError("out_dir is empty; name a folder (or None for no files)")
    check_flag(resume, "resume")


def _check_clients(clients: Any, n: int) -> list[np.ndarray]:
    """The clients as 1-D integer index arrays (lists and tensors are converted). Anything but
    a list of them (one flat array, a dict, the partitioner itself, None) failed in
    ``len()``, with Python's own words."""
    what = "clients must be a list of 1-D integer index arrays, one per client"
    if isinstance(clients, dict):
        raise TypeError(f"{what}, got a dict; pass list(clients.values())")
    if not isinstance(clients, list | tuple | np.ndarray | torch.Tensor):
        hint = " (call it: partition(labels, num_clients, rng))" if callable(clients) else ""
        raise TypeError(f"{what}, got {type(clients).__name__}{hint}")
    ragged = isinstance(clients, np.ndarray) and clients.dtype == object  # arrays in an array
    if isinstance(clients, np.ndarray | torch.Tensor) and clients.ndim != 2 and not ragged:
        raise ValueError(f"{what}, got one array of shape {tuple(clients.shape)}")
    if not len(clients):
        raise ValueError("no clients: the partition is empty")
    arrays = [np.asarray(idx) for idx in clients]
    repeated = []
    for k, idx in enumerate(arrays):
        if idx.ndim == 1 and idx.size == 0:  # [] is float64 to numpy: said before the dtype
            raise ValueError(f"client {k} has no samples; use a partition with a minimum size")
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(
                f"client {k} must be a 1-D integer index array, got shape {idx.shape} of "
                f"{idx.dtype}"
            )
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"client {k} has indices outside the training set [0, {n})")
        if len(np.unique(idx)) < len(idx):
            repeated.append(k)
    if repeated:  # oversampling may be meant; a partition mistake usually is not
        warnings.warn(
            f"{len(repeated)} client(s) (the first: client {repeated[0]}) hold a sample more "
            "than once: it is trained on that often each epoch and counts that often in the "
            "client's weight n_k",
            stacklevel=3,
        )
    return arrays


def train(
    model: nn.Module,
    data: FederatedDataset,
    clients: list[np.ndarray],
    algorithm: Algorithm,
    config: TrainConfig,
    *,
    runtime: Runtime | None = None,
    aggregator: Aggregator | None = None,
    compressor: Compressor | None = None,
    downlink_compressor: Compressor | None = None,
    network: CostModel | None = None,
    byzantine: Byzantine | None = None,
    loss_fn: LossFn = cross_entropy,
    init: torch.Tensor | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callback: Callback | None = None,
) -> TrainResult:
    """Train ``model`` federatedly on ``data`` split into ``clients`` (index arrays).

    ``init`` gives the initial flat parameters (default: the model's current ones).
    ``loss_fn(logits, labels)`` returns one loss per sample (``reduction='none'``).
    ``compressor`` compresses every client's model-sized uploads (default: none); the
    metrics count the bytes of the payloads it really produced; a stochastic one draws from
    its own ``seed`` (mixed with each client's id), not ``config.seed``: give runs of
    different seeds compressors of different seeds (``shoal run`` does). ``downlink_compressor``
    compresses the server's broadcast against the clients' copy (see
    :mod:`shoal.runtime.broadcast`; bytes again as really produced). ``network`` adds
    ``round_sim_seconds`` and the cumulative ``sim_seconds`` to every metrics row: the round's
    time on that network (see :mod:`shoal.cost`). ``byzantine`` makes some
    clients attack (see :mod:`shoal.attacks.byzantine`).
    With ``out_dir``, writes ``metrics.jsonl``, ``checkpoint.pt``, ``model.pt`` and
    ``summary.json`` there; ``resume=True`` continues from the checkpoint in ``out_dir``.
    ``model`` keeps its parameters (it is moved to ``config.device``): the trained ones are
    ``result.params``, put into a model by ``result.spec.load_into(model, result.params)``.
    """
    _check_arguments(
        model, data, algorithm, config, runtime, aggregator, compressor, downlink_compressor,
        network, byzantine, init, out_dir, resume, callback,
    )  # fmt: skip
    clients = _check_clients(clients, len(data.train))
    config.sampler.check(len(clients))
    outside = [] if byzantine is None else sorted(c for c in byzantine.clients if c >= len(clients))
    if outside:
        raise ValueError(
            f"byzantine names client(s) {outside}, but there are {len(clients)} clients; "
            f"build it with byzantine(f, {len(clients)}, ...)"
        )
    check_sampling(config, algorithm, len(clients))
    _warn_weighting(config)
    if network is not None and network.codec_seconds_per_element > 0:
        raise ValueError(
            "network: codec_seconds_per_element is charged per data-parallel exchange only; a "
            "federated client compresses once per local training, so fold that time into "
            "seconds_per_sample"
        )
    dev = resolve_device(config.device)
    runtime = runtime if runtime is not None else SimRuntime()
    main = runtime.is_main  # the one process that writes files
    ranks_device = getattr(runtime, "compute_device", None)
    if ranks_device is not None and str(config.device) == "auto":
        # A distributed runtime chose this rank's device with its backend: "auto" alone
        # picked cuda on every rank, also where the runtime fell back to gloo on the CPU
        # (more processes than GPUs), whose collectives then got GPU tensors.
        dev = ranks_device
    aggregator = aggregator if aggregator is not None else mean()
    warn_if_unkept(aggregator)
    if compressor is None:  # an algorithm with its own wire encoding (DGC) is charged by it
        compressor = getattr(algorithm, "default_compressor", None) or identity()
    downlink = downlink_compressor if downlink_compressor is not None else identity()
    check_downlink(downlink)
    _check_tracked(algorithm, compressor)
    _check_tracked_mean(algorithm, aggregator)
    model = model.to(dev)
    spec = ParamSpec.of(model)
    params = start_params(model, spec, init, dev)
    try:  # one built for another model (PowerSGD's shapes) failed in round 2, not naming it
        downlink.init(params)
    except ValueError as e:
        raise ValueError(f"downlink compressor {downlink.name}: {e}") from None
    x, y = data.train.x.to(dev), data.train.y.to(dev)
    y_true = y  # what the model is scored against: the labels before any poisoning
    attack = None
    if byzantine is not None:
        if isinstance(byzantine.behaviour, LabelFlip):  # they train honestly on poisoned data
            flip, k = byzantine.behaviour.num_classes, data.train.num_classes
            if flip != k:  # 9 - y of 5-class labels failed inside the first round's loss
                raise ValueError(
                    f"label_flip({flip}) maps labels to {flip - 1} - y, but the data has {k} "
                    f"classes: build it with label_flip({k})"
                )
            y = _flipped(y, clients, byzantine.clients, byzantine.behaviour)
        else:
            attack = byzantine.behaviour
        if isinstance(attack, Mimic):
            bad = sum(0 <= c < len(clients) for c in byzantine.clients)
            sampler = config.sampler
            attack.check_rounds(min(sampler.clients_per_round, len(clients)), bad, sampler.replace)
    x_test, y_test = data.test.x.to(dev), data.test.y.to(dev)
    check_model(model, x, y_true, x_test, data.train.num_classes, loss_fn)
    sizes = np.array([len(c) for c in clients], dtype=np.float64)
    # Every client's aggregation weight: a round averages its clients' messages by these.
    weight_K = sizes if config.weighting == "samples" else np.ones(len(clients))
    work = getattr(algorithm, "work_override", None) or config.work
    if work != config.work and config.work != LocalWork():  # the default was not chosen
        warnings.warn(
            f"{algorithm.name} fixes its own local work ({work}); the configured "
            f"{config.work} is ignored",
            stacklevel=2,
        )
    straggle = config.stragglers
    if straggle.fraction > 0 and not straggle.drop and work.epochs == 1:
        warnings.warn(
            f"stragglers (fraction {straggle.fraction}) run 1 to E-1 of the E local epochs; "
            "with E = 1 there is nothing less to do, so they change nothing here. Give the "
            "clients more epochs, or drop the stragglers",
            stacklevel=2,
        )
    m = getattr(config.sampler, "clients_per_round", None)
    if straggle.fraction > 0 and m is not None and stragglers_keep(m, straggle.fraction) == m:
        warnings.warn(
            f"stragglers (fraction {straggle.fraction}) of {m} client(s) a round: "
            f"round({m} x (1 - {straggle.fraction})) = {m} keep the full work, so no client "
            "ever straggles; raise the fraction or sample more clients",
            stacklevel=2,
        )

    setup = _setup(
        algorithm, model, spec, clients, config, aggregator, byzantine, compressor, downlink
    )
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise ValueError("resume=True needs the out_dir of the run to continue")
    server = algorithm.server_init(params)
    store = ClientStore()
    bcast: DownlinkState = {}  # the clients' copy of the broadcast, for downlink compression
    sim = 0.0  # simulated seconds so far, with a network cost model
    rows: list[dict[str, Any]] = []
    start_round, wall, cum_up, cum_down = 0, 0.0, 0, 0
    restored: dict[str, Any] = {}  # what the checkpoint kept of the carried objects
    if out is not None:
        if resume and not (out / CHECKPOINT).exists():  # before the folder is made: a typo's
            raise ValueError(f"cannot resume: no {CHECKPOINT} in {out}")  # stayed, empty
        if main:
            out.mkdir(parents=True, exist_ok=True)
        if resume:
            ck = load_checkpoint(out / CHECKPOINT, dev, "params")
            check_checkpoint_dtype(out / CHECKPOINT, ck["params"], params.dtype)
            params, server, rows = ck["params"], ck["server"], ck["metrics"]
            store = ClientStore(ck["clients"], ck["compressor"])
            start_round, wall = ck["round"], ck["wall_seconds"]
            cum_up, cum_down = ck["cum_uplink_bytes"], ck["cum_downlink_bytes"]
            bcast, sim = ck.get("downlink", {}), ck.get("sim_seconds", 0.0)
            differ = _check_resumed(out, start_round, config.rounds, ck.get("setup", {}), setup)
            # Another aggregator's or attack's saved state is not this one's (a KeyError).
            restored = {k: v for k, v in ck.get("carried", {}).items() if k not in differ}
            if "algorithm class" in differ:
                server, store = algorithm.server_init(params), ClientStore({}, store.compressor)
            if "compressor" in differ:  # the clients' uplink states (residuals, seeds, queries)
                store = ClientStore(store.states)
            if "downlink" in differ:  # the clients' copy: sent dense again, as in round 1
                bcast = {}
        if main:
            write_metrics(out / METRICS, rows)
            if not resume:  # an earlier run's outputs would sit beside this run's rows
                for stale in (CHECKPOINT, SUMMARY, MODEL):
                    (out / stale).unlink(missing_ok=True)
    # Objects that carry state from round to round (centered clipping's last aggregate, a
    # seeded attack's or bucketing's random stream) continue a resumed run's state, and start
    # a fresh run afresh even when they served an earlier run.
    carried: dict[str, Any] = {"aggregator": aggregator, "attack": attack}
    for name, obj in carried.items():
        if callable(getattr(obj, "load_state_dict", None)):
            obj.load_state_dict(restored.get(name))

    bar = progress_bar(
        range(start_round, config.rounds),
        initial=start_round,
        total=config.rounds,
        desc=algorithm.name,
        unit="round",
        disable=not (config.progress and main),
    )
    for r in bar:
        t0 = time.perf_counter()
        sampled = config.sampler(sizes, config.seed, r)
        epochs = config.stragglers.epochs(len(sampled), work, config.seed, r)
        keep = epochs > 0
        down, down_W, bcast = broadcast(
            downlink, algorithm.download(params, server), sampled, bcast, spec.num_params
        )
        down_bytes = int(down_W.sum())
        samples_W, up_W = np.zeros(len(sampled)), np.zeros(len(sampled))  # for the cost model
        row: dict[str, Any] = {"round": r + 1, "clients": int(keep.sum())}
        if keep.any():
            trained = sampled[keep]
            plans = [
                make_plan(clients[c], work, int(e), config.seed, r, int(c))
                for c, e in zip(trained, epochs[keep])
            ]
            w = weight_K[trained]
            task = RoundTask(
                model,
                spec,
                loss_fn,
                algorithm,
                aggregator,
                compressor,
                down["params"],  # the clients' copy: with downlink compression, not params
                down,
                x,
                y,
                trained,
                plans,
                w,
                attack,
                None if byzantine is None else byzantine.mask(trained),
                r,
            )
            try:
                res = runtime.run_round(task, store)
            except FloatingPointError as e:  # an error-feedback residual went NaN/inf
                raise FloatingPointError(f"round {r + 1}: {e}") from None
            share = float(w.sum() / weight_K.sum())
            params, server = algorithm.server_update(
                params, server, res.mean_msg, len(trained), len(clients), share
            )
            if not torch.isfinite(params).all():
                raise FloatingPointError(
                    f"round {r + 1}: the global model has NaN/inf entries; lower the learning "
                    "rate(s) or check the data"
                )
            row.update(train_loss=res.train_loss, uplink_bytes=res.uplink_bytes)
            samples_W[keep] = [p.mask_TB.sum() for p in plans]
            per_client = res.client_uplink_bytes
            up_W[keep] = res.uplink_bytes / len(trained) if per_client is None else per_client
        else:  # every sampled client was a dropped straggler: no update, server state kept
            row.update(train_loss=None, uplink_bytes=0)
        cum_up += row["uplink_bytes"]
        cum_down += down_bytes
        row.update(downlink_bytes=down_bytes, cum_uplink_bytes=cum_up, cum_downlink_bytes=cum_down)
        if network is not None:
            # The server waits for the clients it keeps: a dropped straggler's download (long on
            # a slow link) set the round's time before.
            round_s = network.federated_round(
                sampled[keep], samples_W[keep], up_W[keep], down_W[keep], r
            )
            sim += round_s
            row.update(round_sim_seconds=round_s, sim_seconds=sim)
        if (r + 1) % config.eval_every == 0 or r + 1 == config.rounds:
            # On every process: a distributed runtime shares the test rows out.
            loss_n, correct_n = runtime.predict(
                model, spec, params, x_test, y_test, loss_fn, config.eval_batch_size
            )
            row["test_loss"], row["test_accuracy"] = pooled(loss_n, correct_n)
            bar.set_postfix(acc=f"{row['test_accuracy']:.3f}", loss=f"{row['test_loss']:.3f}")
            if config.eval_train:
                loss_n, correct_n = runtime.predict(
                    model, spec, params, x, y_true, loss_fn, config.eval_batch_size
                )
                row["global_train_loss"], row["global_train_accuracy"] = pooled(loss_n, correct_n)
        else:
            row["test_loss"] = row["test_accuracy"] = None
        wall += time.perf_counter() - t0  # training, aggregation and evaluation
        row["wall_seconds"] = wall
        rows.append(row)
        if callback is not None:
            callback(row)
        if out is not None and main:
            append_metrics(out / METRICS, row)
        if out is not None and ((r + 1) % config.checkpoint_every == 0 or r + 1 == config.rounds):
            everyone = runtime.gather_store(store)  # a collective: every rank takes part
            if main:
                ck = {
                    "round": r + 1,
                    "params": params,
                    "server": server,
                    "clients": everyone.states,
                    "compressor": everyone.compressor,
                    "metrics": rows,
                    "wall_seconds": wall,
                    "cum_uplink_bytes": cum_up,
                    "cum_downlink_bytes": cum_down,
                    "downlink": bcast,
                    "sim_seconds": sim,
                    "setup": setup,
                }
                ck["carried"] = {
                    name: obj.state_dict()
                    for name, obj in carried.items()
                    if callable(getattr(obj, "state_dict", None))
                }
                atomic_save(ck, out / CHECKPOINT)
    bar.close()

    summary = _summary(
        model, spec, params, data, clients, loss_fn, config, rows, algorithm.name, runtime
    )
    if out is not None and main:
        atomic_save(spec.state_dict(model, params), out / MODEL)
        replace_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    runtime.sync()  # other ranks return once the run's files are complete
    return TrainResult(params=params, spec=spec, metrics=rows, summary=summary)


def _flipped(
    y: torch.Tensor, clients: Sequence[np.ndarray], byzantine: frozenset[int], flip: LabelFlip
) -> torch.Tensor:
    """The labels the clients train on when the ``byzantine`` clients flip theirs: each of their
    samples flipped once (flipped per client, a sample two of them held went back to its own
    label). A sample an honest client holds too is refused: it cannot hold both labels."""
    if not byzantine:
        return y
    flipped = np.zeros(len(y), dtype=bool)  # one mask: np.isin per client took 33 s on FEMNIST
    for c in byzantine:
        flipped[np.asarray(clients[c], dtype=np.int64)] = True
    own = np.flatnonzero(flipped)
    for c, idx in enumerate(clients):
        if c not in byzantine and flipped[np.asarray(idx, dtype=np.int64)].any():
            raise ValueError(
                f"label_flip: honest client {c} holds samples that Byzantine clients flip "
                "(the clients' index lists overlap); give the Byzantine clients their own samples"
            )
    y = y.clone()
    at = torch.as_tensor(own, device=y.device)
    y[at] = flip(y[at])
    return y


def _summary(
    model: nn.Module,
    spec: ParamSpec,
    params: torch.Tensor,
    data: FederatedDataset,
    clients: list[np.ndarray],
    loss_fn: LossFn,
    config: TrainConfig,
    rows: list[dict[str, Any]],
    name: str,
    runtime: Runtime,
) -> dict[str, Any]:
    """Final numbers, with the distribution of per-client accuracy of the global model."""
    dev = params.device
    evaluated = [r for r in rows if r["test_accuracy"] is not None]
    summary: dict[str, Any] = {
        "algorithm": name,
        "rounds": len(rows),
        "num_clients": len(clients),
        "num_params": spec.num_params,
        "final_test_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
        "final_test_loss": evaluated[-1]["test_loss"] if evaluated else None,
        "best_test_accuracy": max((r["test_accuracy"] for r in evaluated), default=None),
        "total_uplink_bytes": rows[-1]["cum_uplink_bytes"] if rows else 0,
        "total_downlink_bytes": rows[-1]["cum_downlink_bytes"] if rows else 0,
        "wall_seconds": rows[-1]["wall_seconds"] if rows else 0.0,
        "environment": environment(dev),
    }
    if rows and "sim_seconds" in rows[-1]:  # with a network cost model, as a parallel run's
        summary["sim_seconds"] = rows[-1]["sim_seconds"]
    if config.client_eval:
        _, correct = runtime.predict(
            model,
            spec,
            params,
            data.train.x.to(dev),
            data.train.y.to(dev),
            loss_fn,
            config.eval_batch_size,
        )
        summary["client_train_accuracy"] = distribution(per_client_accuracy(correct, clients))
    if data.natural_test_clients is not None and _natural_split(data, clients):
        _, correct_t = runtime.predict(
            model,
            spec,
            params,
            data.test.x.to(dev),
            data.test.y.to(dev),
            loss_fn,
            config.eval_batch_size,
        )
        summary["client_test_accuracy"] = distribution(
            per_client_accuracy(correct_t, data.natural_test_clients)
        )
    return summary


def _natural_split(data: FederatedDataset, clients: list[np.ndarray]) -> bool:
    """Whether ``clients`` are the dataset's natural users, in their order: only then are the
    users' test samples the clients' own (with as many clients from another partition, the
    summary scored the users' test sets as theirs)."""
    users = data.natural_clients
    return (
        users is not None
        and len(users) == len(clients)
        and all(np.array_equal(np.sort(u), np.sort(c)) for u, c in zip(users, clients))
    )
