"""Deep Gradient Compression: Lin, Han, Mao, Wang, Dally, "Deep Gradient Compression: Reducing
the Communication Bandwidth for Distributed Training", ICLR 2018 (Sec. 3;
``synxlin/deep-gradient-compression``, ``dgc/memory.py`` and ``dgc/compression.py``).

Data-parallel: every worker takes one minibatch step per round (:attr:`DGC.work_override`)
and uploads a sparse message; the server averages the messages and steps. For worker ``w``
with gradient ``g`` (recovered from its one local step, ``g = (x - y) / lr``)::

    g <- g * min(1, c / ||g||),  c = clip_norm / sqrt(N)   local gradient clipping (Sec. 3.2)
    u <- m u + g                                            momentum correction (Sec. 3.2)
    v <- v + u                                              local accumulation
    S <- the top rho_t entries of |v|, per tensor           DGC's sampled threshold (Sec. 3.1)
    send v on S;   v[S] <- 0;   u[S] <- 0                   momentum factor masking (Sec. 3.3)

and the server sets ``x <- x - lr * mean_w(send_w)`` (the momentum is already in the
messages). Only tensors with ``dim > 1`` are sparsified; biases and norm scales travel dense as
``u`` (what the reference's ``train.py`` does: it all-reduces them and applies momentum
after). The selection is :class:`shoal.compress.DGCTopK`'s (strided ~``sample_ratio`` sample,
then the 1.3 / 0.8 adaptation); ``sample_ratio=1`` makes it an exact top-k.

Sparsity warm-up (Sec. 3.3): the density ``rho_t`` starts high and falls to ``density`` over
``warmup_epochs`` epochs of ``epoch_steps`` rounds each. The paper and the README of the
official code give ``1/4, 1/16, 1/64, 1/256`` for four epochs (sparsity 75%, 93.75%, 98.4%,
99.6%), then 0.1%: that is ``warmup="paper"``, the default, ``rho_e = max(4^-(e+1), rho)``.
The official code's ``warmup_compress_ratio`` instead interpolates geometrically,
``rho_e = max(c^(e+1), rho)`` with ``c = rho^(1/(E+1))`` (0.316, 0.1, 0.032, 0.01, 0.0032
for rho = 0.001, E = 5): ``warmup="code"``. We default to the paper because it is the published
method and its README agrees with it; the code's schedule is one argument away.

At density 1 with ``momentum_masking=False`` this is synchronous momentum SGD on the averaged
gradient. *With* masking every weight entry is sent, so its ``u`` is zeroed each step and the
weights take plain SGD steps (the dense biases keep their momentum); the reference behaves the
same, since masking zeroes the momentum of every sent entry.

Messages: ``update`` [W, D], zero off ``S`` in the sparsified tensors. Their exact wire size
comes from :attr:`DGC.default_compressor` (pass it as ``train(compressor=...)``): every
sparsified tensor as ``(value, index)`` pairs of its nonzeros, the rest dense, so the bytes
charged are those of the pairs DGC sends (4 B values; indices in the shorter of the smallest
integer that holds the tensor's size, 1-4 B, and 2 B offsets in 32768-entry blocks with a
count per block, :func:`shoal.compress.sparsify.sparse_payload`; plus the framing of
:mod:`shoal.compress.wire`). The reference sends 4 B values and 4-8 B indices, so its
bytes for the same pairs are higher: about 6 B a pair here for a large layer at 0.1%.

Deviations, named: no weight decay (the reference keeps a separate momentum for it) and no
Nesterov variant; the learning-rate warm-up of the reference's configs is the caller's
business; the strided sample's random offset is drawn from ``(seed, tensor, step)``, the same
on every worker (the reference draws it per process); the server's mean is the run's
aggregation mean (``TrainConfig.weighting="uniform"`` for the paper's ``1/N``; equal shards
make the two the same). Local clipping uses the global L2 norm of the worker's whole gradient
(Pascanu et al. 2013, as Sec. 3.2 describes); the reference ships it switched off.
Recovering ``g`` from the float32 step rounds it: an entry with ``|lr g|`` below half an ulp of
its weight comes back as 0 (on the 2NN at lr 0.01, 50 of 116,642 nonzero entries; relative
error ~5e-5), so those are not accumulated; :func:`shoal.parallel.dgc`, which is handed the
gradient itself, has no such loss.

Shape suffixes: ``W`` workers, ``D`` flat parameters, ``K`` kept entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch

from shoal.algorithms.base import LocalWork, check_lr
from shoal.checks import check_count, check_flag, check_seed, is_real
from shoal.compress._common import as_shapes, check_flat, mix
from shoal.compress.base import Payload
from shoal.compress.layerwise import Layerwise, skip_1d
from shoal.compress.sparsify import (
    DGCTopK,
    flat_nonzero,
    sparse_decompress,
    sparse_decompress_sum,
    sparse_payload,
)
from shoal.compress.wire import payload_nbytes
from shoal.types import ClientState, Message, ServerState

Warmup = Literal["paper", "code"]


def warmup_density(
    step: int, density: float, epoch_steps: int, warmup_epochs: int = 4, schedule: Warmup = "paper"
) -> float:
    """The density of round ``step`` (0-based) under DGC's sparsity warm-up (module docstring).

    ``epoch_steps = 0`` or ``warmup_epochs = 0`` turns the warm-up off.
    """
    if epoch_steps <= 0 or step >= warmup_epochs * epoch_steps:
        return density
    epoch = step // epoch_steps
    base = 0.25 if schedule == "paper" else density ** (1.0 / (warmup_epochs + 1))
    return max(base ** (epoch + 1), density)


def check_warmup_length(rule: DGC, epoch_steps: int | None) -> DGC:
    """``rule``, unless its warm-up would be silently off: the warm-up counts epochs, and only
    the caller knows how many steps one has. Density 1 has nothing to warm up."""
    if epoch_steps is None and rule.warmup_epochs > 0 and rule.density < 1:
        raise ValueError(
            "dgc: the sparsity warm-up needs epoch_steps, the steps of one epoch (a worker's "
            "shard over the batch size, rounded up), or warmup_epochs=0 (or epoch_steps=0) "
            "for none"
        )
    return rule


def required_shapes(shapes: Sequence[Sequence[int]] | None) -> tuple[torch.Size, ...]:
    """The model's tensor shapes, which DGC needs: only tensors with ``dim > 1`` are
    sparsified."""
    if shapes is None:
        raise ValueError(
            "dgc: shapes is required (ParamSpec.of(model).shapes): only tensors with dim > 1 "
            "are sparsified"
        )
    return as_shapes(shapes, "dgc")


def check_clip_norm(clip_norm: Any) -> None:
    """DGC's clipping threshold: a finite number > 0 (True was taken as 1, a string failed
    inside the first step)."""
    if not (is_real(clip_norm) and 0 < clip_norm < math.inf):
        raise ValueError(f"dgc: clip_norm must be a positive number, got {clip_norm!r}")


def clip_locally(g_WD: torch.Tensor, clip_norm: float, num_workers: int) -> torch.Tensor:
    """Local gradient clipping (Sec. 3.2): each worker's whole gradient to L2 norm at most
    ``clip_norm / sqrt(N)``, with ``torch.nn.utils.clip_grad_norm_``'s rule (scale by
    ``c / (||g|| + 1e-6)``, never up)."""
    local = clip_norm / math.sqrt(num_workers)
    norm_W1 = torch.linalg.vector_norm(g_WD, dim=1, keepdim=True)
    return g_WD * (local / (norm_W1 + 1e-6)).clamp(max=1.0)


@dataclass(frozen=True)
class Nonzeros:
    """Lossless: a block's nonzero entries as ``(value, index)`` pairs, or the whole block
    dense when that is fewer bytes (above ~50% density), so no message costs more than dense.

    Sparse payload as :func:`shoal.compress.top_k`'s (``values``, ``indices``, ``size``);
    dense payload ``values``.
    """

    name: str = "nonzeros"

    def init(self, x_D: torch.Tensor) -> None:
        return None

    def compress(self, x_D: torch.Tensor, state: None) -> tuple[Payload, None]:
        x_D = check_flat(x_D, self.name)
        index_K = flat_nonzero(x_D != 0)
        sparse = sparse_payload(x_D[index_K], index_K, x_D.numel(), ascending=True)
        dense = {"values": x_D}
        return (sparse if payload_nbytes(sparse) < payload_nbytes(dense) else dense), state

    def decompress(self, payload: Payload) -> torch.Tensor:
        return sparse_decompress(payload) if "indices" in payload else payload["values"]

    def decompress_sum(
        self, payloads: Sequence[Payload], dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The left-to-right sum of the sparse and dense messages in one buffer, bit for bit."""
        return sparse_decompress_sum(payloads, dtype)

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)


@dataclass(frozen=True)
class DGC:
    """Deep Gradient Compression as a data-parallel algorithm; see the module docstring.

    Client state: ``u`` (momentum) and ``v`` (accumulation) [D], ``step`` (rounds taken, which
    drives the warm-up). Server state: none.
    """

    every_client_every_round: ClassVar[bool] = True
    """Data-parallel: each worker trains once every round (``shoal.train`` refuses sampling
    with replacement, whose duplicates the count of sampled clients cannot tell apart)."""

    lr: float
    shapes: tuple[torch.Size, ...]
    density: float = 0.001
    momentum: float = 0.9
    batch_size: int | None = 32
    momentum_masking: bool = True
    clip_norm: float | None = None
    num_workers: int | None = None
    sample_ratio: float = 0.01
    warmup_epochs: int = 4
    epoch_steps: int = 0
    warmup: Warmup = "paper"
    seed: int = 0
    name: str = "dgc"

    def __post_init__(self) -> None:
        check_lr("lr", self.lr)
        object.__setattr__(self, "shapes", as_shapes(self.shapes, "dgc"))
        if not (is_real(self.density) and 0 < self.density <= 1):
            raise ValueError(f"dgc: density must be in (0, 1], got {self.density!r}")
        if not (is_real(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"dgc: momentum must be in [0, 1), got {self.momentum!r}")
        check_flag(self.momentum_masking, "dgc: momentum_masking")  # "false" switched it on
        if self.batch_size is not None:  # True, 2.5 or NaN were refused later, as LocalWork's
            check_count(self.batch_size, "dgc: batch_size")
        if self.clip_norm is not None:
            check_clip_norm(self.clip_norm)
            if self.num_workers is None:
                raise ValueError(
                    "dgc: clip_norm needs num_workers (N): the local threshold is clip_norm/sqrt(N)"
                )
        if self.num_workers is not None:  # 2.5 failed only after round 1's training
            check_count(self.num_workers, "dgc: num_workers")
        if not (is_real(self.sample_ratio) and 0 < self.sample_ratio <= 1):
            raise ValueError(f"dgc: sample_ratio must be in (0, 1], got {self.sample_ratio!r}")
        check_seed(self.seed, "dgc: seed")  # 1.5 was truncated to 1
        for name in ("warmup_epochs", "epoch_steps"):  # one at a time: a config sets only one
            check_count(getattr(self, name), f"dgc: {name}", least=0)
        if self.warmup not in ("paper", "code"):
            raise ValueError(f"dgc: warmup must be 'paper' or 'code', got {self.warmup!r}")

    @property
    def work_override(self) -> LocalWork:
        """One local minibatch step per round, whatever the run's ``LocalWork`` says."""
        return LocalWork(epochs=1, batch_size=self.batch_size, steps=1)

    @property
    def default_compressor(self) -> Layerwise:
        """The uplink encoding whose ``nbytes`` are DGC's real bytes (module docstring)."""
        return Layerwise(Nonzeros(), self.shapes, skip_1d)

    @cached_property
    def _layout(self) -> tuple[tuple[int, int, bool], ...]:
        """``(start, stop, sparsified)`` per tensor: only ``dim > 1`` tensors are sparsified."""
        out, offset = [], 0
        for shape in self.shapes:
            numel = math.prod(shape)
            out.append((offset, offset + numel, not skip_1d(shape)))
            offset += numel
        return tuple(out)

    def check_size(self, num_params: int) -> None:
        size = self._layout[-1][1]
        if num_params != size:
            raise ValueError(
                f"dgc: shapes describe {size} parameters but the model has {num_params}; "
                "pass ParamSpec.of(model).shapes"
            )

    def density_at(self, step: int) -> float:
        return warmup_density(step, self.density, self.epoch_steps, self.warmup_epochs, self.warmup)

    def server_init(self, params_D: torch.Tensor) -> ServerState:
        return {}

    def client_init(self, params_D: torch.Tensor) -> ClientState:
        self.check_size(params_D.shape[-1])
        zeros = torch.zeros_like(params_D)
        step = torch.zeros((), dtype=torch.int64, device=params_D.device)
        return {"u": zeros, "v": zeros.clone(), "step": step}

    def download(self, params_D: torch.Tensor, server: ServerState) -> Message:
        return {"params": params_D}

    def correction(
        self, params_WD: torch.Tensor, down: Message, client: ClientState
    ) -> torch.Tensor | None:
        return None

    def _select(self, v_K: torch.Tensor, density: float, step: int, tensor: int) -> torch.Tensor:
        """Indices of the entries of one worker's tensor to send this round."""
        if density >= 1:
            return torch.arange(v_K.numel(), device=v_K.device)
        selector = DGCTopK(density, self.sample_ratio)
        return selector.select(v_K, {"seed": mix(self.seed, tensor), "step": step})

    def upload(
        self, params_WD: torch.Tensor, down: Message, client: ClientState, steps_W1: torch.Tensor
    ) -> tuple[Message, ClientState]:
        if not bool((steps_W1 == 1).all()):
            raise ValueError("dgc takes exactly one local step per round (see work_override)")
        g_WD = (down["params"] - params_WD) / self.lr
        if self.clip_norm is not None:
            assert self.num_workers is not None  # checked in __post_init__
            g_WD = clip_locally(g_WD, self.clip_norm, self.num_workers)
        steps = [int(s) for s in client["step"]]
        send_WD, u_WD, v_WD = self.sparsify(g_WD, client["u"], client["v"], steps)
        return {"update": send_WD}, {"u": u_WD, "v": v_WD, "step": client["step"] + 1}

    def sparsify(
        self, g_WD: torch.Tensor, u_WD: torch.Tensor, v_WD: torch.Tensor, steps: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each worker's message for its (clipped) gradient ``g`` at its step ``steps[w]``
        (0-based: the warm-up's clock), and its new ``u`` and ``v``: momentum correction,
        accumulation, the sampled-threshold selection and momentum factor masking."""
        u_WD = self.momentum * u_WD + g_WD
        v_WD = v_WD + u_WD
        send_WD = torch.zeros_like(v_WD)
        for tensor, (start, stop, sparsified) in enumerate(self._layout):
            if not sparsified:  # dense: send the momentum itself, nothing is left behind
                send_WD[:, start:stop] = u_WD[:, start:stop]
                v_WD[:, start:stop] = 0
                continue
            for w, step in enumerate(steps):
                v_K, u_K = v_WD[w, start:stop], u_WD[w, start:stop]
                index_K = self._select(v_K, self.density_at(step), step, tensor)
                send_WD[w, start:stop][index_K] = v_K[index_K]
                v_K[index_K] = 0
                # Momentum factor masking: a sent entry's momentum would keep pushing it in the
                # old direction for rounds after the update it belongs to was applied (Sec. 3.3).
                if self.momentum_masking:
                    u_K[index_K] = 0
        return send_WD, u_WD, v_WD

    def server_update(
        self,
        params_D: torch.Tensor,
        server: ServerState,
        mean_msg: Message,
        num_sampled: int,
        num_clients: int,
        weight_share: float,
    ) -> tuple[torch.Tensor, ServerState]:
        if num_sampled != num_clients:
            raise ValueError(
                f"dgc is data-parallel: every worker must train every round, got {num_sampled} "
                f"of {num_clients} (set clients_per_round to the number of clients, no drops)"
            )
        if self.num_workers is not None and num_clients != self.num_workers:
            raise ValueError(
                f"dgc: num_workers={self.num_workers} but the run has {num_clients} workers"
            )
        return params_D - self.lr * mean_msg["update"], server


def dgc(
    lr: float,
    shapes: Sequence[Sequence[int]] | None = None,
    density: float = 0.001,
    momentum: float = 0.9,
    batch_size: int = 32,
    momentum_masking: bool = True,
    clip_norm: float = 0.0,
    num_workers: int = 0,
    sample_ratio: float = 0.01,
    warmup_epochs: int = 4,
    epoch_steps: int | None = None,
    warmup: Warmup = "paper",
    seed: int = 0,
) -> DGC:
    """DGC with learning rate ``lr`` on a model whose ``ParamSpec.shapes`` are ``shapes``.

    Defaults from the reference's ``configs/dgc/__init__.py`` (density 0.001, sample ratio
    0.01, momentum 0.9). ``clip_norm = 0`` and ``num_workers = 0`` mean none;
    ``batch_size = 0``: the whole local shard. The warm-up (the paper's, by default) counts
    epochs, so below density 1 it needs ``epoch_steps``, the rounds of one (a worker's shard
    over ``batch_size``, rounded up); ``warmup_epochs = 0`` or ``epoch_steps = 0`` runs
    without it. Train with ``compressor=alg.default_compressor`` for exact bytes, and every
    worker sampled every round.
    """
    rule = DGC(
        lr,
        required_shapes(shapes),
        density=density,
        momentum=momentum,
        batch_size=batch_size or None,
        momentum_masking=momentum_masking,
        clip_norm=clip_norm or None,
        num_workers=num_workers or None,
        sample_ratio=sample_ratio,
        warmup_epochs=warmup_epochs,
        epoch_steps=epoch_steps or 0,
        warmup=warmup,
        seed=seed,
    )
    return check_warmup_length(rule, epoch_steps)
