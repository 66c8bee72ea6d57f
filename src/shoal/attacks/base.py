"""The Attack protocol: ``(honest_HD, f) -> byzantine_FD``.

An attack is given the honest updates of the round (the attacks here are omniscient, as in the
papers that define them) and the number ``f`` of Byzantine workers, and returns the ``f``
vectors those workers send. The inbox of the round is then ``torch.cat([honest_HD, byz_FD])``
(in any order: the robust aggregators do not depend on it). Label flipping is the exception: it
is a transform of a Byzantine client's data (``label_flip``), not of the updates.

Shape suffixes: ``H`` honest rows, ``F`` Byzantine rows, ``D`` flat parameters (a row may have
any shape; outputs keep it), ``B`` batch.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from shoal.checks import check_count


@runtime_checkable
class Attack(Protocol):
    """An update attack: ``attack(honest_HD, f)`` returns the ``f`` Byzantine rows ``[f, D]``."""

    def __call__(self, honest_HD: torch.Tensor, f: int) -> torch.Tensor: ...


def check_attack(honest_HD: torch.Tensor, f: int, name: str, min_honest: int = 1) -> None:
    """What every attack needs: a float tensor of at least ``min_honest`` rows, ``f >= 0``."""
    if not isinstance(honest_HD, torch.Tensor) or honest_HD.dim() < 1:
        raise TypeError(f"{name}: honest updates must be a tensor with a leading row axis")
    if not honest_HD.is_floating_point():
        raise TypeError(f"{name}: honest updates must be floating point, got {honest_HD.dtype}")
    if honest_HD.shape[0] < min_honest:
        raise ValueError(
            f"{name} needs at least {min_honest} honest update(s), got {honest_HD.shape[0]}"
        )
    check_count(f, f"{name}: f", least=0)


def repeat(vector_D: torch.Tensor, f: int) -> torch.Tensor:
    """``f`` copies of one Byzantine vector, ``[F, ...]`` (all workers collude on one point)."""
    return vector_D.unsqueeze(0).expand(f, *vector_D.shape).clone()
