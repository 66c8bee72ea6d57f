"""Pre-aggregation wrappers: bucketing and nearest-neighbour mixing (NNM).

Both transform the inbox and hand the result to any aggregator, so they compose with every rule
here (``nnm(trimmed_mean(f), f)``, ``bucketing(krum(f'), s=2)``).

**Bucketing**: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
Bucketing", ICLR 2022, Alg. 1: randomly permute the ``n`` inputs, average consecutive groups of
``s`` (``ceil(n/s)`` buckets, the last one possibly smaller), aggregate the bucket means. With
``delta`` the Byzantine fraction it needs ``delta * s < 1/2``. A Byzantine input spoils at most
its own bucket, so the inner rule faces at most ``f`` bad rows out of ``ceil(n/s)``: give it the
same ``f`` and check its requirement against the bucket count. ``s = 2`` in the paper's
experiments.

Randomness: a fresh permutation every call, drawn from a ``torch.Generator`` seeded with
``seed`` when the wrapper is built, so a run is reproducible (the k-th call uses the k-th
permutation of that seed's stream) and an adversary cannot predict the buckets from one round.
This generator is the wrapper's only hidden state; pass ``generator=`` to a call to drive it
yourself. Bucketing is therefore *not* permutation invariant for a fixed stream position, and
the same inbox gives different outputs on successive calls.

Weights: bucket means are **weighted** means of their members, and the inner rule receives each
bucket's total weight, so ``bucketing(mean())`` equals ``mean()`` exactly; robust inner rules
ignore those weights as usual. Weights must be positive.

**NNM**: Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe
for Optimal Byzantine ML under Heterogeneity", AISTATS 2023, Alg. 1: replace every input by the
average of its ``n - f`` nearest inputs (itself included, at distance 0), then aggregate.
Requirement: ``n > 2f``. Weights: the mixing is **unweighted** (as in the paper); the weights
are passed on unchanged to the inner rule. Cost O(N^2 D) (float64 Gram distances).

Shapes: ``N`` inbox rows, ``D`` flat parameters, ``G`` buckets.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from shoal.aggregate._common import as_matrix, canonical_order, check_f, require, sq_distances
from shoal.aggregate.base import Aggregator, NonFiniteInbox, TooFewInputs
from shoal.checks import check_count, check_seed
from shoal.streams import restore_stream, seeded_stream


@dataclass(frozen=True)
class Bucketing:
    """Average random buckets of ``s`` inputs, then apply ``agg`` to the bucket means."""

    agg: Aggregator
    s: int = 2
    seed: int = 0
    linear: bool = False
    _generator: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_count(self.s, "bucketing: the bucket size s")
        _check_inner(self.agg, "bucketing")
        check_seed(self.seed, "bucketing: seed")  # a float failed inside torch's manual_seed
        # The stream advances with every call; frozen otherwise (see the module docstring).
        object.__setattr__(self, "_generator", seeded_stream(self.seed))

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is, and the inner rule's state if it keeps one (``shoal.train``
        checkpoints it, so a resumed run draws on)."""
        return {"generator": self._generator.get_state(), "agg": _inner_state(self.agg)}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        """Continue the saved stream; ``None``: from the seed's start (a fresh run)."""
        restore_stream(self._generator, self.seed, None if saved is None else saved["generator"])
        _load_inner_state(self.agg, None if saved is None else saved["agg"])

    def buckets(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The next permutation of ``range(n)`` cut into rows of ``s``, padded with ``-1``."""
        perm = torch.randperm(n, generator=self._generator if generator is None else generator)
        num_buckets = -(-n // self.s)
        padded = torch.full((num_buckets * self.s,), -1, dtype=torch.long)
        padded[:n] = perm
        return padded.reshape(num_buckets, self.s)

    def __call__(
        self,
        inbox_ND: torch.Tensor,
        weights_N: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        x_ND, shape = as_matrix(inbox_ND, weights_N, "bucketing")
        if bool((weights_N <= 0).any()) or not bool(torch.isfinite(weights_N).all()):
            raise ValueError(
                "bucketing: weights must be positive and finite (drop zero-weight rows first)"
            )
        idx_GS = self.buckets(x_ND.shape[0], generator).to(x_ND.device)
        valid = idx_GS >= 0
        safe = idx_GS.clamp_min(0)
        w_GS = torch.where(
            valid,
            weights_N.to(device=x_ND.device, dtype=x_ND.dtype)[safe],
            torch.zeros_like(safe, dtype=x_ND.dtype),
        )
        w_G = w_GS.sum(dim=1)
        means_GD = torch.einsum("gs,gsd->gd", w_GS, x_ND[safe]) / w_G[:, None]
        try:
            return self.agg(means_GD.reshape((-1, *shape)), w_G)
        except ValueError as e:  # the inner rule's n counts buckets, not inputs: say so
            # The same class for the two the runtime and a grid read (the runtime adds the
            # round to TooFewInputs; a grid records NonFiniteInbox as a divergence).
            n, g = x_ND.shape[0], means_GD.shape[0]
            kind = type(e) if isinstance(e, (TooFewInputs, NonFiniteInbox)) else ValueError
            raise kind(
                f"bucketing: {n} inputs in buckets of s={self.s} are {g} inputs to the inner "
                f"rule, and {e}"
            ) from None


@dataclass(frozen=True)
class NearestNeighborMixing:
    """Replace each input by the mean of its ``n - f`` nearest inputs, then apply ``agg``."""

    agg: Aggregator
    f: int
    linear: bool = False

    def __post_init__(self) -> None:
        check_f(self.f, "nnm")
        _check_inner(self.agg, "nnm")

    # NNM itself keeps nothing between calls, but the rule it feeds may (centered clipping's
    # last aggregate): without these, shoal.train neither checkpointed that state nor reset
    # it, so a resumed run restarted it from zero and a reused wrapper carried an old run's.
    def state_dict(self) -> dict[str, Any]:
        """The inner rule's state, if it keeps one (``shoal.train`` checkpoints it)."""
        return {"agg": _inner_state(self.agg)}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        """Continue the inner rule's saved state; ``None``: start it afresh (a fresh run)."""
        _load_inner_state(self.agg, None if saved is None else saved["agg"])

    def mix(self, x_ND: torch.Tensor) -> torch.Tensor:
        """The mixed inputs ``[N, D]``: row i is the mean of the ``n - f`` rows nearest to it."""
        n = x_ND.shape[0]
        near_NK = torch.topk(sq_distances(x_ND), n - self.f, dim=1, largest=False).indices
        # The self-distance is an exact 0, so row i is always among its own neighbours
        # (up to exact duplicates of it, which are the same vector anyway).
        select_NN = torch.zeros(n, n, dtype=x_ND.dtype, device=x_ND.device)
        select_NN.scatter_(1, near_NK, 1.0 / (n - self.f))
        return select_NN @ x_ND

    def __call__(self, inbox_ND: torch.Tensor, weights_N: torch.Tensor) -> torch.Tensor:
        x_ND, shape = as_matrix(inbox_ND, weights_N, "nnm")
        n = x_ND.shape[0]
        require(n >= 2 * self.f + 1, "nnm", "n >= 2f+1", n, self.f)
        x_ND, weights_N = canonical_order(x_ND, weights_N)
        return self.agg(self.mix(x_ND).reshape(n, *shape), weights_N)


def _inner_state(agg: Any) -> Any:
    """A wrapped rule's ``state_dict()``, or ``None`` when it keeps no state."""
    return agg.state_dict() if callable(getattr(agg, "state_dict", None)) else None


def _load_inner_state(agg: Any, saved: Any) -> None:
    """Restore a wrapped rule's state (``None``: afresh); a stateless rule has nothing to do."""
    if callable(getattr(agg, "load_state_dict", None)):
        agg.load_state_dict(saved)


def bucketing(agg: Aggregator, s: int = 2, seed: int = 0) -> Bucketing:
    """Bucketing (Karimireddy et al. 2022) in front of ``agg``: random buckets of ``s``."""
    return Bucketing(agg=agg, s=s, seed=seed)


def nnm(agg: Aggregator, f: int) -> NearestNeighborMixing:
    """Nearest-neighbour mixing (Allouah et al. 2023) in front of ``agg``; needs ``n > 2f``."""
    return NearestNeighborMixing(agg=agg, f=f)


def _check_inner(agg: Any, who: str) -> None:
    """The rule a wrapper feeds: a string, None, a class, or one of Shoal's factories not
    called (``median`` for ``median()``) failed only in round 1. A plain function
    ``(inbox_ND, weights_N) -> x_D`` of the user's is a rule."""
    factory = inspect.isfunction(agg) and agg.__module__.startswith("shoal.aggregate")
    if isinstance(agg, type) or not callable(agg) or factory:
        raise TypeError(f"{who}: agg must be an aggregator (e.g. median()), got {agg!r}")
