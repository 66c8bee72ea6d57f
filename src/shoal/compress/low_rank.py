"""PowerSGD: rank-r compression by a step of subspace iteration, warm-started.

Vogels, Karimireddy, Jaggi, NeurIPS 2019, Algorithm 1 (``epfml/powersgd``). Each parameter
block of ``shapes`` with two or more dimensions is a matrix ``M`` [n, m] (convolution kernels
``[out, in, kh, kw]`` become ``[out, in*kh*kw]``); with the query ``Q`` [m, r] from the state::

    P <- M Q                 (round 1: all-reduce P)
    P <- orthogonalize(P)    (reduced QR; the paper uses Gram-Schmidt, same span)
    Q <- M^T P               (round 2: all-reduce Q)
    M_hat = P Q^T = P P^T M

and the new ``Q`` is the next call's warm start ("reuse_query"). 1-D blocks (biases, norms)
and blocks where ``(n + m) r * min_compression_rate >= n m`` (PyTorch's ``powerSGD_hook`` rule)
travel dense. PowerSGD is biased: wrap it in :func:`error_feedback` as the paper does.

Two ways to use it:

- ``compress(x_D, state)``: one worker, one message ``{p_i, q_i, dense}``;
  ``decompress`` = ``P Q^T``. With full rank (r = min(n, m)) it reproduces ``x_D``. A block
  whose new ``Q`` has an inf or NaN entry (a non-finite input) or is all zero (an all-zero
  block) keeps its previous query (see ``_kept``).
- The paper's all-reduce, with homomorphic sums: every worker starts from the same ``Q``
  (same seed; later, :meth:`PowerSGD.with_query` with the summed ``Q``). Round 1:
  ``project(x_D, state)`` gives ``{p_i: M_i Q}``, and ``sum_payloads`` of these equals
  ``project`` of the summed input (linear in M; equal up to float rounding). Round 2:
  ``complete(x_D, summed_p, state)`` orthogonalizes the summed P and sends ``{p_i, q_i: M^T P,
  dense}``; messages that share P add up: ``decompress(sum_payloads(ms)) = P (sum Q_i)^T``
  equals ``sum(decompress(m))`` up to float rounding (bit for bit on the dense blocks).
  The scale of the warm-start ``Q`` does not matter (P is orthogonalized), so the sum of the
  workers' Q may be reused as it is. ``shoal.parallel.sync_sgd(..., reduce="two_round")`` runs
  this protocol (``two_round`` is true with one power iteration).

Two options of the reference implementations, both off by default (the paper's Algorithm 1):

- ``power_iterations``: ``compress`` first runs ``power_iterations - 1`` steps
  ``Q <- M^T orthogonalize(M Q)`` locally, then the step above, i.e. subspace iteration, which
  approaches the best rank-r approximation (truncated SVD) as the count grows. A worker that
  compresses its own message holds all of ``M``, so the extra steps cost matrix products on the
  sender and no bytes. (The packaged ``epfml/powersgd``'s ``num_iters_per_step`` is different:
  there ``M`` is spread over the workers, so each half-step is all-reduced and sent, and the
  approximations of the half-steps add up.)
- ``warm_start=False`` (PyTorch's ``PowerSGDState(warm_start=False)``): every call starts from
  a fresh Gaussian query, drawn from ``(seed, step)`` so that every worker draws the same one
  in a step (PyTorch: "this seed should differ at every step"), instead of the last call's.
  Warm starting pays off when a worker compresses every step; a federated client sampled
  every ~10 rounds warm-starts from a stale query, and there a cold start with 2 iterations is
  better (``benchmarks/accuracy_vs_bytes.py``). (Starting every step from the *same* query,
  as this option once did, starves error feedback: the residual ``(I - P P^T) M`` is
  orthogonal to ``Q`` after one iteration, ``P = orth(M Q)`` never sees it, and it grew
  without bound.)

``project`` / ``complete`` (the two-round all-reduce protocol) are always one step.

Deviation, named: the paper's code orthogonalizes with Gram-Schmidt and an epsilon; we use
``torch.linalg.qr`` (same span when P has full column rank, well defined when it has not), in
float32 for half-precision inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch

from shoal.checks import check_count, check_flag, check_number, check_seed
from shoal.compress._common import (
    as_shapes,
    check_dense,
    check_flat,
    check_seed_state,
    mix,
    next_state,
    seed_state,
)
from shoal.compress.base import Payload, add_all, check_same
from shoal.compress.wire import payload_nbytes


def _orthogonalize(p: torch.Tensor) -> torch.Tensor:
    """The reduced QR's Q of ``p``, computed in float32 for half-precision inputs (torch has
    no QR for them) and returned in ``p``'s dtype."""
    if p.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.qr(p.float(), mode="reduced").Q.to(p.dtype)
    return torch.linalg.qr(p, mode="reduced").Q


@dataclass(frozen=True)
class _Block:
    offset: int
    numel: int
    rows: int  # n (0 for a dense block)
    cols: int  # m
    rank: int  # min(r, n, m), 0 for a dense block


@dataclass(frozen=True)
class PowerSGD:
    """Rank-``rank`` PowerSGD per matrix block of ``shapes``; see the module docstring.

    State: ``{"q0": Q_0, "q3": Q_3, ...}`` (one [m, r] query per compressed block ``i``), and
    with ``warm_start=False`` the ``seed`` and ``step`` its next fresh queries are drawn from.
    Payload: ``p<i>`` [n, r] and ``q<i>`` [m, r] per compressed block, ``dense`` (the other
    blocks, concatenated in order; absent if there are none).
    """

    shapes: tuple[torch.Size, ...]
    rank: int = 1
    min_compression_rate: float = 2.0
    seed: int = 0
    power_iterations: int = 1
    warm_start: bool = True
    homomorphic: ClassVar[bool] = True
    contractive: ClassVar[bool] = True  # P P^T M with orthonormal P: a projection
    shared_seed: ClassVar[bool] = True
    """Every worker starts from the same query Q, as the all-reduce needs."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", as_shapes(self.shapes, "powersgd"))
        check_count(self.rank, "powersgd: rank")
        check_count(self.power_iterations, "powersgd: power_iterations")
        check_seed(self.seed, "powersgd: seed")
        check_flag(self.warm_start, "powersgd: warm_start")
        # inf sent every block dense, silently; True was 1.
        check_number(self.min_compression_rate, "powersgd: min_compression_rate", positive=False)

    @property
    def name(self) -> str:
        extra = f", power_iterations={self.power_iterations}" if self.power_iterations > 1 else ""
        extra += "" if self.warm_start else ", warm_start=False"
        return f"powersgd(rank={self.rank}{extra})"

    @cached_property
    def _blocks(self) -> tuple[_Block, ...]:
        blocks, offset = [], 0
        for shape in self.shapes:
            numel = math.prod(shape)
            rows, cols, rank = 0, 0, 0
            if len(shape) >= 2:
                n, m = shape[0], numel // max(shape[0], 1)
                r = min(self.rank, n, m)
                if r > 0 and (n + m) * r * self.min_compression_rate < n * m:
                    rows, cols, rank = n, m, r
            blocks.append(_Block(offset, numel, rows, cols, rank))
            offset += numel
        return tuple(blocks)

    @property
    def size(self) -> int:
        return sum(b.numel for b in self._blocks)

    def _check(self, x_D: torch.Tensor) -> torch.Tensor:
        x_D = check_flat(x_D, self.name)
        if x_D.numel() != self.size:
            raise ValueError(
                f"powersgd: x_D has {x_D.numel()} entries but shapes describe {self.size}"
            )
        return x_D

    def _matrix(self, x_D: torch.Tensor, b: _Block) -> torch.Tensor:
        return x_D[b.offset : b.offset + b.numel].reshape(b.rows, b.cols)

    def _compressed(self) -> list[tuple[int, _Block]]:
        return [(i, b) for i, b in enumerate(self._blocks) if b.rank]

    def init(self, x_D: torch.Tensor, seed: int | None = None) -> dict[str, Any]:
        """Gaussian queries from ``seed``, drawn on the CPU: every worker gets the same Q."""
        x_D = self._check(x_D)
        seed = self.seed if seed is None else seed
        state: dict[str, Any] = self._queries(seed, 0, x_D)
        if not self.warm_start:  # where the next steps' fresh queries come from
            state.update(seed_state(seed))
        return state

    def _queries(self, seed: int, step: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Step ``step``'s Gaussian queries from ``seed``, drawn on the CPU (the same on every
        worker and device), in ``like``'s dtype and device."""
        state = {}
        for i, b in self._compressed():
            g = torch.Generator().manual_seed(mix(seed, i) if step == 0 else mix(seed, i, step))
            q = torch.randn(b.cols, b.rank, generator=g)
            state[f"q{i}"] = q.to(device=like.device, dtype=like.dtype)
        return state

    def _fresh(self, state: dict[str, Any], like: torch.Tensor) -> dict[str, Any]:
        """A cold start's next state: the queries of the next step. A state saved before cold
        starts drew a fresh query per step has no ``seed`` and ``step``: it goes on from this
        compressor's seed (a checkpointed run resumes instead of failing)."""
        if "seed" not in state and "step" not in state:
            state = {**state, **seed_state(self.seed)}
        seed, step = check_seed_state(state, self.name)
        return {**next_state(state), **self._queries(seed, step + 1, like)}

    def _check_state(self, x_D: torch.Tensor, state: dict[str, Any]) -> None:
        for i, b in self._compressed():
            q = state.get(f"q{i}") if isinstance(state, dict) else None
            if not isinstance(q, torch.Tensor) or q.shape != (b.cols, b.rank):
                raise ValueError(f"{self.name}: the state must come from init(x_D) (query q{i})")
            if q.dtype != x_D.dtype or q.device != x_D.device:
                raise ValueError(
                    f"{self.name}: the state holds {q.dtype} queries on {q.device} but x_D is "
                    f"{x_D.dtype} on {x_D.device}; init the state from a vector like x_D"
                )

    def project(self, x_D: torch.Tensor, state: dict[str, Any]) -> Payload:
        """Round 1: ``{p<i>: M_i Q_i}`` (not orthogonalized; sum it across workers)."""
        x_D = self._check(x_D)
        self._check_state(x_D, state)
        return {f"p{i}": self._matrix(x_D, b) @ state[f"q{i}"] for i, b in self._compressed()}

    def complete(
        self, x_D: torch.Tensor, p_payload: Payload, state: dict[str, Any]
    ) -> tuple[Payload, dict[str, Any]]:
        """Round 2: orthogonalize the (summed) P, send ``Q = M^T P`` and the dense blocks."""
        x_D = self._check(x_D)
        payload: Payload = {}
        new_state = dict(state)
        dense = []
        for i, b in enumerate(self._blocks):
            if not b.rank:
                dense.append(x_D[b.offset : b.offset + b.numel])
                continue
            # contiguous: QR returns column-major P, and matmul's result may depend on layout;
            # the receiver's (deserialized, row-major) copy must decompress to the same bits.
            p = _orthogonalize(p_payload[f"p{i}"]).contiguous()
            q = (self._matrix(x_D, b).T @ p).contiguous()
            payload[f"p{i}"] = p
            payload[f"q{i}"] = q
            new_state[f"q{i}"] = q
        if dense:
            payload["dense"] = torch.cat(dense)
        return payload, new_state if self.warm_start else self._fresh(state, x_D)

    @property
    def two_round(self) -> bool:
        """The paper's two-round all-reduce applies: one step of subspace iteration."""
        return self.power_iterations == 1

    def with_query(self, state: dict[str, Any], payload: Payload) -> dict[str, Any]:
        """The state with the queries of ``payload`` (e.g. the all-reduced Q) as warm start
        (unchanged with ``warm_start=False``: ``complete`` drew the next step's queries)."""
        if not self.warm_start:
            return state
        return _kept(state, {f"q{i}": payload[f"q{i}"] for i, _ in self._compressed()})

    def compress(self, x_D: torch.Tensor, state: dict[str, Any]) -> tuple[Payload, dict[str, Any]]:
        x_D = self._check(x_D)
        self._check_state(x_D, state)
        query = state
        for _ in range(self.power_iterations - 1):
            query = self._subspace_step(x_D, query)
        payload, new_state = self.complete(x_D, self.project(x_D, query), query)
        return payload, _kept(state, new_state) if self.warm_start else new_state

    def _subspace_step(self, x_D: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        """``Q <- M^T orthogonalize(M Q)`` per block, nothing sent."""
        new_state = dict(state)
        for i, b in self._compressed():
            m = self._matrix(x_D, b)
            new_state[f"q{i}"] = m.T @ _orthogonalize(m @ state[f"q{i}"])
        return new_state

    def decompress(self, payload: Payload) -> torch.Tensor:
        return self.decompress_sum([payload])

    def residual(self, accumulated_D: torch.Tensor, payload: Payload) -> torch.Tensor:
        """``accumulated_D - decompress(payload)`` (error feedback's memory), computed in
        ``accumulated_D``'s storage: ``M - P Q^T`` per compressed block by one fused
        ``addmm_`` (equal to the subtraction up to rounding), and the dense blocks, sent as
        exact copies, zeroed. No decompressed vector is formed."""
        for i, b in enumerate(self._blocks):
            block_D = accumulated_D[b.offset : b.offset + b.numel]
            if b.rank:
                block_D.view(b.rows, b.cols).addmm_(payload[f"p{i}"], payload[f"q{i}"].T, alpha=-1)
            else:
                block_D.zero_()
        return accumulated_D

    def decompress_sum(
        self, payloads: Sequence[Payload], dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``sum_w P_w Q_w^T`` per block as one product of the stacked factors,
        ``[P_1 .. P_W] [Q_1 .. Q_W]^T`` (rank ``W r``): equal to the sum of the decompressed
        messages up to rounding, without a dense matrix per message."""
        compressed = self._compressed()
        if compressed and any(f"q{compressed[0][0]}" not in p for p in payloads):
            raise ValueError("powersgd: a round-1 (project) payload has no decompression")
        check_dense(payloads, sum(b.numel for b in self._blocks if not b.rank), "powersgd")
        # Summed in ``dtype``, as the protocol's decompress(p).to(dtype) + ... is: two fp16
        # messages of 40,000 summed to inf before the cast to float32.
        cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
        parts, dense_at = [], 0
        for i, b in enumerate(self._blocks):
            if b.rank:
                p_MR = cast(torch.cat([p[f"p{i}"] for p in payloads], dim=1))
                q_NR = cast(torch.cat([p[f"q{i}"] for p in payloads], dim=1))
                parts.append((p_MR @ q_NR.T).reshape(-1))
            else:
                dense = [cast(p["dense"][dense_at : dense_at + b.numel]) for p in payloads]
                parts.append(add_all(dense))
                dense_at += b.numel
        return torch.cat(parts)

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)

    def sum_payloads(self, payloads: Sequence[Payload]) -> Payload:
        """Sum round-1 payloads (all P), or round-2 payloads that share every P (sum Q, dense).
        Round-1 P = M Q is only summable for one shared query Q, which the payload does not
        carry: workers whose queries were seeded apart sum without complaint."""
        check_same(payloads, (), "powersgd")
        keys = payloads[0].keys()
        if not any(k.startswith("q") for k in keys):  # round 1
            return {k: add_all([p[k] for p in payloads]) for k in keys}
        out: Payload = {}
        for k in keys:
            if k.startswith("p"):
                if any(not torch.equal(p[k], payloads[0][k]) for p in payloads):
                    raise ValueError(
                        "powersgd.sum_payloads: round-2 messages must share P; messages from "
                        "compress() on different inputs do not (use project / complete)"
                    )
                out[k] = payloads[0][k]
            else:
                out[k] = add_all([p[k] for p in payloads])
        return out


def powersgd(
    shapes: Sequence[Sequence[int]],
    rank: int = 1,
    min_compression_rate: float = 2.0,
    seed: int = 0,
    power_iterations: int = 1,
    warm_start: bool = True,
) -> PowerSGD:
    """PowerSGD of rank ``rank`` on the blocks ``shapes`` (``ParamSpec.shapes``)."""
    return PowerSGD(
        as_shapes(shapes, "powersgd"),
        rank,
        min_compression_rate,
        seed,
        power_iterations,
        warm_start,
    )


def _kept(state: dict[str, Any], queries: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the new ``queries`` as warm start, except a query that would stall:
    one with an inf or NaN entry (a non-finite input: every later ``P = M Q``, and so every
    later message, would be NaN), or all zero (a block that was all zero once: then ``M Q = 0``
    and the orthogonalized ``P`` is the first unit vectors, which keep only the first ``r``
    rows of every later ``M``; zero rows there, say dead units, sent nothing ever after and
    error feedback's residual grew without bound). Such a block keeps its previous query."""
    kept = dict(state)
    for k, q in queries.items():
        kept[k] = q.where(q.isfinite().all() & q.ne(0).any(), state[k])
    return kept
