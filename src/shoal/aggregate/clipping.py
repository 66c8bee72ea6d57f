"""Centered clipping.

Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021,
Eq. (2) / Alg. 1:

    v <- v + (1/n) sum_i clip_tau(m_i - v),   clip_tau(z) = z * min(1, tau / ||z||)

repeated ``L`` times (``num_iters``), starting from the **previous round's output** ``v``. The
workers send momentum ``m_i`` in the paper; the rule itself does not care. epfml defaults:
``tau = 10``, ``L = 3``. With ``tau`` larger than every ``||m_i - v||`` one iteration returns
the mean. Requirement: ``f < n/2`` (not checked: the rule takes no ``f``).

State, three ways to hold it:

- ``centered_clip(...)(inbox_ND, weights_N, center_D)``: pure, the caller passes the previous
  output as ``center_D`` (``None``: start from zero, i.e. stateless use);
- ``cc.init(x_D) -> ClipState`` (a zero center shaped like ``x_D``, as in the paper's first
  round) and ``cc.update(inbox_ND, weights_N, state) -> (x_D, ClipState)``: explicit state;
- ``stateful(centered_clip(...))`` (``shoal.aggregate.stateful``): an ``Aggregator`` for a
  runtime that only calls ``(inbox_ND, weights_N)``; it keeps the last output itself.

Weights: **ignored** (the paper averages the clipped differences uniformly; a Byzantine client
could claim any sample count). Shapes: ``N`` inbox rows, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.aggregate._common import as_matrix, mean_scaled_diffs, row_norms
from shoal.checks import check_count, check_number


@dataclass(frozen=True)
class ClipState:
    """The center the next round starts from: the previous round's output."""

    center: torch.Tensor


@dataclass(frozen=True)
class CenteredClip:
    """``L`` centered-clipping iterations around ``center`` (see the module docstring)."""

    tau: float = 10.0
    num_iters: int = 3
    linear: bool = False

    def __post_init__(self) -> None:
        # inf clips nothing (the mean after one iteration): allowed.
        check_number(self.tau, "centered_clip: tau", positive=True, finite=False)
        check_count(self.num_iters, "centered_clip: num_iters")

    def __call__(
        self,
        inbox_ND: torch.Tensor,
        weights_N: torch.Tensor,
        center_D: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x_ND, shape = as_matrix(inbox_ND, weights_N, "centered_clip")
        if center_D is None:
            v = torch.zeros_like(x_ND[0])
        else:
            if center_D.numel() != x_ND.shape[1]:
                raise ValueError(
                    f"centered_clip: center has {center_D.numel()} entries but each message "
                    f"has {x_ND.shape[1]}; pass the previous output of this same message"
                )
            v = center_D.reshape(-1).to(x_ND.device, x_ND.dtype)
        for _ in range(self.num_iters):
            # row_norms, not (x - v).norm(): a float32 norm of a huge but finite Byzantine row
            # overflows to inf, and tau / inf = 0 dropped that row's clipped (norm tau) share.
            # tau / 0 is inf, so an input equal to the center keeps scale 1 (no NaN).
            scale = (self.tau / row_norms(x_ND, v)).clamp(max=1.0)
            v = v + mean_scaled_diffs(scale, x_ND, v)
        return v.reshape(shape)

    def init(self, x_D: torch.Tensor) -> ClipState:
        """The paper's first-round state: a zero center shaped like ``x_D``."""
        return ClipState(center=torch.zeros_like(x_D))

    def update(
        self, inbox_ND: torch.Tensor, weights_N: torch.Tensor, state: ClipState
    ) -> tuple[torch.Tensor, ClipState]:
        """Aggregate around ``state.center``; the output is also the next state's center."""
        out = self(inbox_ND, weights_N, state.center)
        return out, ClipState(center=out)


def centered_clip(tau: float = 10.0, num_iters: int = 3) -> CenteredClip:
    """Centered clipping (Karimireddy, He, Jaggi 2021); wrap in ``stateful`` for a runtime."""
    return CenteredClip(tau=tau, num_iters=num_iters)
