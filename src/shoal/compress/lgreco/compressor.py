"""The L-GreCo compressor: a per-layer level, re-chosen every ``period`` calls.

See :mod:`shoal.compress.lgreco` for the method and its deviations.

Shape suffixes: ``D`` flat parameters, ``L`` compressed layers, ``C`` candidate levels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from shoal.checks import check_count, is_real
from shoal.compress._common import as_shapes, check_flat, init_with_seed, mix, smallest_int_dtype
from shoal.compress.base import Compressor, Payload, is_contractive
from shoal.compress.layerwise import skip_1d
from shoal.compress.lgreco.knapsack import check_buckets, knapsack
from shoal.compress.wire import entry_nbytes, payload_nbytes

Build = Callable[[Any, torch.Size], Compressor]
"""``(level, block shape) -> the compressor of one block at that level``."""
ErrorFn = Callable[[torch.Tensor, torch.Size, Sequence[Any]], list[float]]
"""``(block_D, shape, levels) -> the error at each level``, when it has a closed form."""


def _norm(v_D: torch.Tensor) -> float:
    """``||v_D||_2`` without overflow in its squares: a float32 sum of squares of entries
    ~1e20 is inf although the norm is a float32, and an inf error made the knapsack refuse
    the table ("errors must be finite"). Divided by the largest ``|entry|`` first (Blue,
    ACM TOMS 1978); an inf or NaN entry still gives a non-finite error."""
    big = float(v_D.abs().max()) if v_D.numel() else 0.0
    if not 0 < big < math.inf:
        return float(torch.linalg.vector_norm(v_D))
    return float(torch.linalg.vector_norm(v_D / big, dtype=torch.float64)) * big


@dataclass(frozen=True)
class Allocation:
    """One L-GreCo decision: chosen level per compressed layer, and how it compares."""

    choice: tuple[int, ...]
    """Index into ``levels`` per compressed layer."""
    levels: tuple[Any, ...]
    """The chosen level per compressed layer."""
    nbytes: int
    error: float
    budget: float
    uniform_nbytes: int
    uniform_error: float
    layer_errors: tuple[tuple[float, ...], ...]
    layer_nbytes: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class LGreCo:
    """Per-layer compressor whose levels are re-chosen every ``period`` calls (module doc).

    State: ``{"step", "choice" [L], "blocks": {"<i>": block i's state}}``.
    Payload: ``"<i>.<key>"`` per compressed block (its compressor's payload), ``dense`` (the
    skipped blocks, concatenated), ``choice`` (the level index per compressed block).
    """

    shapes: tuple[torch.Size, ...]
    build: Build
    levels: tuple[Any, ...]
    uniform: Any
    period: int = 100
    alpha: float = 1.0
    buckets: int = 10_000
    error_fn: ErrorFn | None = None
    family: str = "custom"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", as_shapes(self.shapes, "lgreco"))
        levels = tuple(self.levels)
        if not levels or len(set(levels)) != len(levels) or len(levels) > 255:
            # The first few only: 256 candidates made one line of all 256.
            shown = ", ".join(map(repr, levels[:5])) + (", ..." if len(levels) > 5 else "")
            raise ValueError(
                f"lgreco: choices (the candidate levels) must be 1 to 255 distinct values, got "
                f"{len(levels)} ({shown})"
            )
        if isinstance(self.uniform, (bool, np.bool_)):  # True "in" (1, 7, ...) is the level 1
            raise ValueError(f"lgreco: the budget's setting must be a number, got {self.uniform!r}")
        if self.uniform not in levels:
            levels = (*levels, self.uniform)  # the budget's setting is always a candidate
        object.__setattr__(self, "levels", levels)
        for level in levels:
            try:
                self.build(level, torch.Size([2, 2]))
            except ValueError as e:  # the family's message names its own argument (ratio, ...)
                raise ValueError(
                    f"lgreco({self.family}): the candidate {level!r} (of choices, or the "
                    f"budget's setting) is refused: {e}"
                ) from None
        check_count(self.period, "lgreco: period")
        if not (is_real(self.alpha) and 0 < self.alpha < math.inf):
            raise ValueError(f"lgreco: alpha must be a positive number, got {self.alpha!r}")
        check_buckets(self.buckets, "lgreco")

    @property
    def name(self) -> str:
        return f"lgreco({self.family}, uniform={self.uniform})"

    @property
    def contractive(self) -> bool | None:
        """Every level's compressor is (False if one is not, None if one does not say)."""
        flags = {is_contractive(self.build(level, torch.Size([2, 2]))) for level in self.levels}
        return False if False in flags else None if None in flags else True

    @cached_property
    def _blocks(self) -> tuple[tuple[int, int, torch.Size, bool], ...]:
        """``(offset, numel, shape, compressed)`` per block."""
        out, offset = [], 0
        for shape in self.shapes:
            numel = math.prod(shape)
            out.append((offset, numel, shape, not skip_1d(shape)))
            offset += numel
        return tuple(out)

    def _compressed(self) -> list[tuple[int, int, int, torch.Size]]:
        return [(i, o, n, s) for i, (o, n, s, c) in enumerate(self._blocks) if c]

    def _check(self, x_D: torch.Tensor) -> torch.Tensor:
        x_D = check_flat(x_D, self.name)
        size = sum(n for _, n, _, _ in self._blocks)
        if x_D.numel() != size:
            raise ValueError(f"lgreco: x_D has {x_D.numel()} entries, shapes describe {size}")
        return x_D

    def profile(self, x_D: torch.Tensor) -> tuple[list[list[float]], list[list[int]]]:
        """Error and exact payload bytes of every level on every compressed block of ``x_D``."""
        x_D = self._check(x_D)
        errors, sizes = [], []
        for i, offset, numel, shape in self._compressed():
            block_D = x_D[offset : offset + numel]
            err_C, size_C = [], []
            for level in self.levels:
                comp = self.build(level, shape)
                payload, _ = comp.compress(
                    block_D, init_with_seed(comp, block_D, mix(self.seed, i))
                )
                size_C.append(sum(entry_nbytes(f"{i}.{k}", t) for k, t in payload.items()))
                if self.error_fn is None:
                    lost = block_D - comp.decompress(payload).to(block_D.dtype)
                    err_C.append(_norm(lost))
            if self.error_fn is not None:
                err_C = [float(e) for e in self.error_fn(block_D, shape, self.levels)]
            errors.append(err_C)
            sizes.append(size_C)
        return errors, sizes

    def allocate(self, x_D: torch.Tensor) -> Allocation:
        """The DP's choice for ``x_D`` (see the module docstring), with its costs."""
        errors, sizes = self.profile(x_D)
        u = self.levels.index(self.uniform)
        uniform = tuple(u for _ in errors)
        uniform_error = sum(e[u] for e in errors)
        budget = self.alpha * uniform_error
        choice = uniform
        if errors and budget > 0:
            found = knapsack(errors, sizes, budget, self.buckets)
            # None: alpha < 1 asked for less error than any choice reaches; get closest to it.
            choice = found if found is not None else tuple(int(np.argmin(e)) for e in errors)
        elif errors and budget == 0 and all(0 in e for e in errors):
            # A zero budget (every layer lossless at the uniform level, e.g. a zero gradient)
            # allows exactly the lossless levels: per layer, the cheapest of them. The knapsack
            # needs a positive budget, and uniform was kept at any price.
            choice = tuple(
                min((k for k, e_k in enumerate(e) if e_k == 0), key=lambda k: s[k])
                for e, s in zip(errors, sizes)
            )

        def cost(c: tuple[int, ...]) -> int:
            return sum(s[k] for s, k in zip(sizes, c))

        if self.alpha >= 1 and cost(choice) > cost(uniform):
            choice = uniform  # rounding up made uniform look infeasible; it is not
        return Allocation(
            choice=choice,
            levels=tuple(self.levels[k] for k in choice),
            nbytes=cost(choice),
            error=sum(e[k] for e, k in zip(errors, choice)),
            budget=budget,
            uniform_nbytes=cost(uniform),
            uniform_error=uniform_error,
            layer_errors=tuple(tuple(e) for e in errors),
            layer_nbytes=tuple(tuple(s) for s in sizes),
        )

    def _init_block(
        self, level: Any, i: int, shape: torch.Size, block_D: torch.Tensor, seed: int, step: int
    ) -> Any:
        """A block's state at ``level``; seeded by block and step, so a re-chosen level does
        not replay the random draws of an earlier one."""
        return init_with_seed(self.build(level, shape), block_D, mix(seed, i, step))

    def _carried(self, old: Any, fresh: Any) -> Any:
        """PowerSGD's state at a new rank keeps the old query's leading columns (orthogonal
        iteration orders them: the first ``r`` span the dominant ``r``-dimensional subspace),
        the rest from the fresh draw. Right after a change from rank 4 to 8, a random query
        alone sent 2.25x the best rank-8 error the allocation had budgeted, the carried one 1.46x
        (medians over 20 random low-rank-plus-noise layers; 1.16x and 1.01x from 4 to 2)."""
        if self.family != "powersgd":
            return fresh
        carried = {}
        for key, q_new in fresh.items():
            r = min(q_new.shape[1], old[key].shape[1])
            carried[key] = torch.cat([old[key][:, :r], q_new[:, r:]], dim=1)
        return carried

    def init(self, x_D: torch.Tensor, seed: int | None = None) -> dict[str, Any]:
        x_D = self._check(x_D)
        seed = self.seed if seed is None else seed
        u = self.levels.index(self.uniform)
        blocks = {
            str(i): self._init_block(self.uniform, i, shape, x_D[o : o + n], seed, 0)
            for i, o, n, shape in self._compressed()
        }
        return {
            "step": 0,  # plain ints, as seed_state's (0-d tensors made checkpoints slow)
            "seed": int(seed),
            "choice": torch.full((len(blocks),), u, dtype=torch.int64),
            "blocks": blocks,
        }

    def compress(self, x_D: torch.Tensor, state: dict[str, Any]) -> tuple[Payload, dict[str, Any]]:
        x_D = self._check(x_D)
        if not isinstance(state, dict) or "choice" not in state:
            raise ValueError("lgreco: state must come from lgreco(...).init(x_D)")
        step, seed = int(state["step"]), int(state["seed"])
        choice = state["choice"]
        blocks = dict(state["blocks"])
        compressed = self._compressed()
        if step % self.period == 0:
            new = torch.tensor(self.allocate(x_D).choice, dtype=torch.int64)
            for j, (i, o, n, shape) in enumerate(compressed):
                if int(new[j]) != int(choice[j]):  # a new level starts from a fresh state
                    level = self.levels[int(new[j])]
                    fresh = self._init_block(level, i, shape, x_D[o : o + n], seed, step)
                    blocks[str(i)] = self._carried(blocks[str(i)], fresh)
            choice = new
        payload: Payload = {}
        for j, (i, o, n, shape) in enumerate(compressed):
            comp = self.build(self.levels[int(choice[j])], shape)
            part, blocks[str(i)] = comp.compress(x_D[o : o + n], blocks[str(i)])
            payload.update({f"{i}.{k}": v for k, v in part.items()})
        dense = [x_D[o : o + n] for o, n, _, c in self._blocks if not c]
        if dense:
            payload["dense"] = torch.cat(dense)
        code = smallest_int_dtype(len(self.levels) - 1)
        payload["choice"] = choice.to(device=x_D.device, dtype=code)
        state = {"step": step + 1, "seed": seed, "choice": choice}
        return payload, {**state, "blocks": blocks}

    def decompress(self, payload: Payload) -> torch.Tensor:
        choice = payload["choice"].long().tolist()
        parts, dense_at, j = [], 0, 0
        for i, (_, numel, shape, compressed) in enumerate(self._blocks):
            if not compressed:
                parts.append(payload["dense"][dense_at : dense_at + numel])
                dense_at += numel
                continue
            prefix = f"{i}."
            part = {k[len(prefix) :]: v for k, v in payload.items() if k.startswith(prefix)}
            parts.append(self.build(self.levels[choice[j]], shape).decompress(part).reshape(-1))
            j += 1
        return torch.cat(parts)

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)
