"""Gaussian noise: each Byzantine worker sends an independent ``N(0, sigma^2 I)`` vector.

The "random" attack of the Flag Aggregator experiments (Almasi et al., ICLR 2024) and of the
Byzantine-ML literature since Blanchard et al. 2017 (Gaussian Byzantine workers). The default
``sigma = 1`` is not taken from a paper: set it to the scale of the updates you attack.

Randomness: a ``torch.Generator`` seeded with ``seed`` when the attack is built, advancing with
each call (the k-th round draws the k-th sample of that seed's stream; ``shoal.train`` starts
each run at the stream's start and checkpoints where it is); pass ``generator=`` to a call to
drive it yourself. Noise is drawn on the CPU in float64 and moved to the updates'
device and dtype, so a seed gives the same vectors on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from shoal.attacks.base import check_attack
from shoal.checks import check_seed, is_real
from shoal.streams import restore_stream, seeded_stream


@dataclass(frozen=True)
class GaussianNoise:
    """Gaussian noise in place of updates; build it with :func:`gaussian`."""

    sigma: float = 1.0
    seed: int = 0
    _generator: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # inf sent inf/NaN rows: the robust rules refuse such an inbox, ending the run.
        if not (is_real(self.sigma) and 0 <= self.sigma < math.inf):
            raise ValueError(f"gaussian: sigma must be a finite number >= 0, got {self.sigma!r}")
        check_seed(self.seed, "gaussian: seed")  # 1.5 was seed 1 here and a crash in a run
        object.__setattr__(self, "_generator", seeded_stream(self.seed))

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is (``shoal.train`` checkpoints it, so a resumed run draws on)."""
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        """Continue the saved stream; ``None``: from the seed's start (a fresh run)."""
        restore_stream(self._generator, self.seed, None if saved is None else saved["generator"])

    def __call__(
        self, honest_HD: torch.Tensor, f: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        check_attack(honest_HD, f, "gaussian")
        shape = (f, *honest_HD.shape[1:])
        noise = torch.randn(
            shape,
            generator=self._generator if generator is None else generator,
            dtype=torch.float64,
        )
        return (self.sigma * noise).to(device=honest_HD.device, dtype=honest_HD.dtype)


def gaussian(sigma: float = 1.0, seed: int = 0) -> GaussianNoise:
    """Byzantine workers send ``N(0, sigma^2 I)`` noise, seeded."""
    return GaussianNoise(sigma=sigma, seed=seed)
