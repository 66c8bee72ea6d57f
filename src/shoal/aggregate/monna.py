"""MoNNA's aggregation step: nearest-neighbour averaging around the worker's own vector.

Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023 (MoNNA, Alg. 1). In peer-to-peer training each honest node
``i`` holds ``x_hat_i = x_i - gamma * m_i`` (its parameters after a local momentum step) and
receives the others'; it sets ``x_i`` to the average of the ``n - f`` received vectors closest
to **its own** ``x_hat_i``, its own included (at distance 0). This is the reference code's
``aggregators/cva.py`` with the pivot set to the node itself. The momentum and the local step
belong to the algorithm; this module is only the aggregation rule.

Call it as ``monna(f)(own_D, inbox_ND)``: ``inbox_ND`` holds the *neighbours'* vectors, without
the worker's own, so ``n = N + 1``. For all workers at once,
``monna(f).batched(own_WD, inbox_WND) -> x_WD`` (``W`` workers, each with ``N`` neighbours).
Requirement: ``n >= 2f + 1`` (``f < n/2``). Distances are direct ``||x_j - own||``, O(N D)
per worker. A worker whose squared distances overflowed (float32 vectors ~1e20 apart) or may all
have underflowed (~1e-20 apart or closer) has them recomputed in float64 scaled by its largest
difference (:func:`_scaled_sq_distances`): in the input dtype they all tied at inf or 0, and
arbitrary neighbours were averaged.

Weights: **ignored** (the paper's rule is unweighted); the argument exists for symmetry with
``Aggregator``. Shapes: ``W`` workers, ``N`` neighbours, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.aggregate._common import check_f, require
from shoal.aggregate.base import NonFiniteInbox


def _unsafe_rows(sqd_WN: torch.Tensor) -> torch.Tensor:
    """Workers whose squared distances overflowed (not finite, from finite vectors) or whose
    largest one is below ``tiny / eps``, so that squares of their differences may all have
    underflowed. Other rows keep their distances as computed, bit for bit: a row with some small
    distances next to larger ones loses digits only at an absolute scale of ~1e-19 (float32)."""
    if not sqd_WN.shape[1]:
        return sqd_WN.new_zeros(0, dtype=torch.long)
    info = torch.finfo(sqd_WN.dtype)
    safe_W = sqd_WN.isfinite().all(dim=1) & (sqd_WN.amax(dim=1) >= info.tiny / info.eps)
    return (~safe_W).nonzero().view(-1)


def _scaled_sq_distances(own_D: torch.Tensor, inbox_ND: torch.Tensor) -> torch.Tensor:
    """Squared distances from ``own`` in float64, the differences divided by the largest one
    (Blue's scaled norm, ACM TOMS 1978): neither overflow nor underflow for float32 inputs, nor
    for float64 inputs of any one magnitude. Only their order matters, so the scale stays."""
    diff_ND = inbox_ND.double() - own_D.double()
    big = torch.linalg.vector_norm(diff_ND, ord=torch.inf)
    diff_ND /= torch.where(big > 0, big, 1.0)  # all equal to own: zeros stay zeros
    return diff_ND.square_().sum(dim=1)


@dataclass(frozen=True)
class MoNNA:
    """Average of the ``n - f`` vectors nearest to ``own`` among ``own`` and its neighbours."""

    f: int
    linear: bool = False

    def __post_init__(self) -> None:
        check_f(self.f, "monna")

    def __call__(
        self,
        own_D: torch.Tensor,
        inbox_ND: torch.Tensor,
        weights_N: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One worker: ``own`` of any shape but a matrix, ``inbox`` one such row per
        neighbour. A 2-D ``own`` is refused: ``monna(f)(own_WD, inbox_WND)`` was once the
        all-workers form, and with as many neighbours as workers it would be read as one
        worker's matrix, silently."""
        if own_D.dim() == 2:
            raise ValueError(
                f"monna: an own of shape {tuple(own_D.shape)} is ambiguous (one worker's matrix, "
                "or several workers' vectors): flatten one worker's rows, own.reshape(-1) and "
                "inbox.reshape(N, -1), or call monna(f).batched(own_WD, inbox_WND)"
            )
        if inbox_ND.dim() != own_D.dim() + 1 or inbox_ND.shape[1:] != own_D.shape:
            raise ValueError(
                f"monna: own vector of shape {tuple(own_D.shape)} does not match the inbox "
                f"{tuple(inbox_ND.shape)}; pass own_D [D] with inbox [N, D] (all workers at "
                "once: monna(f).batched(own_WD, inbox_WND))"
            )
        if weights_N is not None and weights_N.shape[-1] != inbox_ND.shape[0]:
            raise ValueError(f"monna: {inbox_ND.shape[0]} neighbours but weights {weights_N.shape}")
        # A row's length, not -1: an empty inbox (a node without neighbours) has no length.
        own, inbox = own_D.reshape(1, -1), inbox_ND.reshape(1, inbox_ND.shape[0], own_D.numel())
        return self.batched(own, inbox).reshape(own_D.shape)

    def batched(self, own_WD: torch.Tensor, inbox_WND: torch.Tensor) -> torch.Tensor:
        """All workers at once: ``own_WD`` and each one's ``N`` neighbours ``inbox_WND``. (One
        ``__call__`` for both forms could not tell a worker's ``[2, 3]`` matrix from two
        workers' vectors.)"""
        own, inbox = own_WD, inbox_WND
        if own.dim() != 2 or inbox.dim() != 3 or inbox.shape[::2] != own.shape:
            raise ValueError(
                f"monna: own vectors of shape {tuple(own.shape)} do not match the inbox "
                f"{tuple(inbox.shape)}; batched takes own [W, D] with inbox [W, N, D]"
            )
        if not (bool(torch.isfinite(own).all()) and bool(torch.isfinite(inbox).all())):
            raise NonFiniteInbox("monna: NaN or inf in the vectors; drop those neighbours first")
        n = inbox.shape[1] + 1
        require(n >= 2 * self.f + 1, "monna", "n >= 2f+1 (n counts the worker itself)", n, self.f)
        k = n - self.f - 1
        sqd_WN = ((inbox - own[:, None, :]) ** 2).sum(dim=2)
        near_WK = torch.topk(sqd_WN, k, dim=1, largest=False).indices
        for w in _unsafe_rows(sqd_WN).tolist():  # rare: one worker at a time bounds the memory
            sqd_N = _scaled_sq_distances(own[w], inbox[w])
            near_WK[w] = torch.topk(sqd_N, k, largest=False).indices
        picked = inbox.gather(1, near_WK[:, :, None].expand(-1, -1, inbox.shape[2]))
        return (own + picked.sum(dim=1)) / (n - self.f)


def monna(f: int) -> MoNNA:
    """MoNNA's nearest-neighbour averaging (Farhadkhani et al. 2023) around the own vector."""
    return MoNNA(f=f)
