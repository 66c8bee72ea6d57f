"""Final test accuracy for every attack x aggregator on one workload, in one of two styles.

Workload: an MNIST-format dataset (the grid's is mnist5k, 4,000 train / 1,000 test images)
or scikit-learn's digits, an MLP with two hidden layers of 200 (init seed 0), 25 clients from
``dirichlet(1.0)`` with ``np.random.default_rng(0)``, of which 5 are Byzantine (clients
:data:`BYZANTINE_CLIENTS`); all 25 take part in every round and the server
aggregates with uniform weights (robust rules ignore weights, and the mean then matches
them). The clean row has no Byzantine clients.

Styles (:data:`STYLES`):

- ``fedavg``: one local epoch of SGD (batch 32, lr 0.05: 4-8 steps on mnist5k), uploads
  ``delta = y - x``, FedAvgM at the server (server lr 1.0, momentum 0.9 on the aggregate).
  25 rounds.
- ``data_parallel``: one minibatch gradient (batch 32) per client per round with **worker**
  momentum 0.9 (``m_i <- 0.9 m_i + 0.1 g_i``, sent as ``-lr m_i``; the server steps by the
  aggregate, lr 1.0, which is ``torch.optim.SGD(lr=0.1, momentum=0.9)`` in PyTorch's
  undampened convention): Karimireddy et al. 2021's setting
  (:mod:`shoal.robustness.momentum`), where the aggregator sees momenta, not single
  gradients. 40 rounds = 40 steps, fewer model updates than the FedAvg style's 25 x 4-8:
  the clean mean reaches ~89% there, and the 56-cell grid then takes about 9 minutes on
  2 cores (13 with the machine shared), within this benchmark's 15-minute budget.

Centered clipping's radius is in the units of the messages and was fixed from a clean run
before any attacked one, at about the honest messages' distance to their mean: FedAvg
deltas 0.15-0.28 (median per round), so tau = 0.25; worker momenta (times lr) grow from 0.06
to 1.7-1.8 after 30 rounds, so tau = 1.0. epfml's tau = 10 is in its own gradient units.

A cell whose global model goes NaN/inf, or whose robust rule refuses an inbox of NaN/inf
updates, is recorded as diverged (``final = None``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import shoal
from shoal.aggregate import NonFiniteInbox
from shoal.algorithms import LocalWork, fedavgm
from shoal.attacks import Byzantine, alie_z
from shoal.data import FederatedDataset, dirichlet, load_digits, load_mnist_family
from shoal.functional import init_params
from shoal.models import mlp
from shoal.progress import progress_bar
from shoal.robustness import presets
from shoal.robustness.finished import FinishedCells, workload_digest
from shoal.robustness.momentum import worker_momentum
from shoal.robustness.presets import Preset
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

NUM_CLIENTS, NUM_BYZANTINE = 25, presets.F
BYZANTINE_CLIENTS = frozenset({0, 5, 14, 16, 18})
"""The published grids' Byzantine clients: ``byzantine(5, 25, ..., seed=0)`` drew them before
its stream got a key of its own (``shoal.streams``); kept so the grids stay reproducible."""
LAST = 5  # rounds averaged for the "last rounds" figure (all of them in a shorter run; the
# JSON key stays ``last5_mean`` whatever the run's length, as the published results have it)


@dataclass(frozen=True)
class Style:
    """One style of the attack x aggregator grid: its algorithm, local work, rounds and columns."""

    name: str
    title: str
    rounds: int
    tau: float
    training: str
    make_algorithm: Callable[[], Any]
    work: LocalWork
    columns: tuple[str, ...]
    """The aggregators of this style's published grid (``--aggregators`` picks others)."""


ALL_COLUMNS = tuple(presets.aggregators(1.0))

STYLES: dict[str, Style] = {
    "fedavg": Style(
        "fedavg",
        "FedAvg style",
        25,
        0.25,
        "1 local epoch SGD batch 32 lr 0.05, uniform weights, "
        "FedAvgM server lr 1.0 momentum 0.9 (on the aggregate)",
        lambda: fedavgm(0.05, server_lr=1.0, momentum=0.9),
        LocalWork(epochs=1, batch_size=32),
        ALL_COLUMNS,
    ),
    "data_parallel": Style(
        "data_parallel",
        "data-parallel style",
        40,
        1.0,
        "1 gradient step per round, batch 32, worker momentum 0.9 "
        "(m <- 0.9 m + 0.1 g, before aggregation), server step lr 1.0 x aggregate, "
        "uniform weights",
        lambda: worker_momentum(1.0, momentum=0.9, batch_size=32),
        LocalWork(epochs=1, batch_size=32, steps=1),
        ("mean", "median", "trimmed_mean", "multi_krum", "geometric_median", "cclip")
        + ("bucketing_tm", "nnm_tm"),
    ),
}


@dataclass(frozen=True)
class Workload:
    """The grid's data, partition, model and initial parameters (:func:`load_workload`)."""

    data: FederatedDataset
    clients: list[np.ndarray]
    model: torch.nn.Module
    init: torch.Tensor
    description: str


def load_workload(data: str, data_dir: str | Path | None) -> Workload:
    """``data="mnist"``: IDX files in ``data_dir`` (mnist5k for the published grid);
    ``data="digits"``: scikit-learn's bundled 8x8 digits (no files needed)."""
    if data == "mnist":
        if data_dir is None:
            raise ValueError("the mnist grid reads IDX files: pass their folder as data_dir")
        ds = load_mnist_family(data_dir)
        name = "mnist5k" if len(ds.train) == 4000 else ds.name
    elif data == "digits":
        ds, name = load_digits(seed=0), "digits"
    else:
        raise ValueError(f"unknown data {data!r}; choose mnist (IDX files) or digits")
    in_features = int(np.prod(ds.train.x.shape[1:]))
    model, p0 = init_params(lambda: mlp(in_features, (200, 200), ds.train.num_classes), 0)
    clients = dirichlet(1.0)(ds.train.y.numpy(), NUM_CLIENTS, np.random.default_rng(0))
    desc = f"{name} ({len(ds.train)} train / {len(ds.test)} test images)"
    return Workload(ds, clients, model, p0, desc)


def run_cell(
    work: Workload, style: Style, rounds: int, attack: Any, aggregator: Any
) -> dict[str, Any]:
    cfg = TrainConfig(
        rounds=rounds,
        sampler=ClientSampler(NUM_CLIENTS),
        work=style.work,
        weighting="uniform",
        progress=False,
        client_eval=False,
    )
    byz = None if attack is None else Byzantine(BYZANTINE_CLIENTS, attack)
    curve: list[float] = []
    t0 = time.perf_counter()
    diverged = None
    try:
        train(
            work.model,
            work.data,
            work.clients,
            style.make_algorithm(),
            cfg,
            aggregator=aggregator,
            byzantine=byz,
            init=work.init,
            callback=lambda row: curve.append(row["test_accuracy"]),
        )
    except (FloatingPointError, NonFiniteInbox) as e:
        # The global model went NaN/inf, or the honest updates did and a robust rule refused
        # its inbox a step earlier (the mean hands them on to the model): the run diverged
        # either way, and the grid goes on. Other errors are mistakes, not results.
        diverged = str(e)
    done = len(curve) == rounds
    return {
        "final": curve[-1] if done else None,
        f"last{LAST}_mean": statistics.fmean(curve[-LAST:]) if done else None,
        "curve": curve,
        "diverged": diverged,
        "seconds": time.perf_counter() - t0,
    }


def mean_under_attack() -> list[str]:
    """What the omniscient attacks make of a uniform mean, from their parameters alone."""
    n, f = NUM_CLIENTS, NUM_BYZANTINE
    h, z = n - f, alie_z(n, f)
    s, eps = presets.SIGN_SCALE, presets.IPM_EPS
    return [
        "With uniform weights and mu, sigma the honest messages' mean and coordinate-wise std, "
        f"the plain mean of the {n}-row inbox is",
        f"{(h - f * s) / n:.2f} mu under sign flip and {(h - f * eps) / n:.2f} mu "
        "under IPM (a shorter step in the honest direction, not a reversed one),",
        f"and mu - {f * z / n:.3f} sigma under ALIE (z_max = {z:.3f}: a shift of "
        f"{f * z / n:.0%} of a standard deviation per coordinate), at {f} Byzantine of {n}.",
    ]


def run_grid(
    work: Workload,
    style: Style,
    rounds: int,
    attacks: dict[str, Preset],
    aggregators: dict[str, Preset],
    *,
    command: str,
    progress: bool = True,
    log_cells: bool = False,
    finished: Path | None = None,
) -> dict[str, Any]:
    """Every attack (plus the clean row) x every aggregator; the report (a JSON-able dict).

    ``log_cells`` prints one line per finished cell above the progress bar. ``finished``: a
    JSON-lines file that keeps each cell as it ends; the cells it already holds for this
    setup are taken from it, not trained again (:mod:`shoal.robustness.finished`)."""
    # The presets for this data's classes (label flip maps y to k - 1 - y), by their names.
    own = presets.attacks(work.data.train.num_classes)
    rows = {"clean": own["clean"], **{name: own.get(name, p) for name, p in attacks.items()}}
    setup = {
        "style": style.name,
        "data": work.description,
        "model": f"MLP {int(work.init.numel()):,} parameters (hidden 200, 200)",
        "clients": f"{NUM_CLIENTS} clients, Dirichlet alpha=1 (rng 0), "
        f"{NUM_BYZANTINE} Byzantine (clients {sorted(BYZANTINE_CLIENTS)}), "
        f"all {NUM_CLIENTS} take part every round",
        "training": style.training,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
    }
    kept = FinishedCells(finished) if finished is not None else None
    reused: list[str] = []  # the cells taken from ``finished``
    same: dict[str, Any] = {}  # what a kept cell's key holds besides its attack and rule
    if kept is not None:
        same = {k: v for k, v in setup.items() if k != "threads"}
        same["shoal"] = shoal.__version__  # another version may train differently
        data = work.data
        same["workload"] = workload_digest(
            [data.train.x, data.train.y, data.test.x, data.test.y, work.init], work.clients
        )

    def cell_of(attack: Preset, agg: Preset) -> dict[str, Any]:
        assert agg.make is not None
        behaviour, rule = None if attack.make is None else attack.make(), agg.make()
        if kept is None:
            return run_cell(work, style, rounds, behaviour, rule)
        # The instances' reprs, not the presets' texts: a changed default changes the key.
        key = kept.key(setup=same, attack=repr(behaviour), aggregator=repr(rule))
        cell = kept.get(key)
        if cell is None:
            cell = run_cell(work, style, rounds, behaviour, rule)
            kept.add(key, cell)
        else:
            reused.append(f"{attack.label} x {agg.label}")
        return cell

    results: dict[str, dict[str, dict[str, Any]]] = {}
    start = time.perf_counter()
    bar = progress_bar(total=len(rows) * len(aggregators), unit="cell", disable=not progress)
    for attack in rows.values():
        for agg in aggregators.values():
            bar.set_description(f"{attack.label} x {agg.label}")
            cell = cell_of(attack, agg)
            results.setdefault(attack.label, {})[agg.label] = cell
            bar.update()
            if log_cells:
                tqdm.write(
                    f"[{bar.n:>2}/{bar.total}] {attack.label:<10} x {agg.label:<13} final "
                    f"{pct(cell['final']):>8}  last{min(LAST, rounds)} "
                    f"{pct(cell[f'last{LAST}_mean']):>8}  "
                    f"{cell['seconds']:5.1f}s  elapsed {time.perf_counter() - start:6.0f}s"
                )
    bar.close()
    grid = {a: {g: c["final"] for g, c in row.items()} for a, row in results.items()}
    mean = presets.aggregators(style.tau)["mean"]
    clean = results["clean"].get(mean.label)
    if clean is None:  # the grid's reference, run even when the mean is not one of its columns
        clean = cell_of(rows["clean"], mean)
    return {
        "command": command,
        "setup": setup,
        "aggregators": {p.label: p.setting for p in aggregators.values()},
        "attacks": {p.label: repr(p.make()) if p.make else p.setting for p in rows.values()},
        "mean_under_attack": mean_under_attack(),
        "results": results,
        "total_seconds": time.perf_counter() - start,
        "reused_cells": reused,
        "headline": {
            "grid": grid,
            "clean_accuracy": clean["final"],
        },
    }


def pct(x: float | None) -> str:
    return "diverged" if x is None else f"{100 * x:.1f}"
