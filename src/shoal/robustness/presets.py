"""The rows and columns of the robustness grid: attacks and aggregators with their settings.

Each entry is a command-line name mapped to a :class:`Preset`: the label the tables and the
heat map show, a factory for a fresh instance (some rules keep state between rounds, so
every cell gets its own), and the hyper-parameters in words. ``f = 5`` wherever a rule
takes it. Centered clipping's radius is in the units of the messages, so it depends on the
style (see :mod:`shoal.robustness.grid`); everything else is the same in both styles.

Attacks (``shoal.attacks``; update attacks are omniscient, they see the round's honest
messages): sign flip ``-mean(honest)`` (Allen-Zhu et al. 2021); label flip ``y -> 9 - y``;
Gaussian ``N(0, I)``; ALIE ``mean - z std`` with the epfml code's ``z_max(25, 5) = 0.25``
(Baruch et al. 2019); IPM ``-0.1 mean(honest)`` (Xie et al., epfml's eps); mimic, the honest
client most extreme along the honest messages' top principal direction (Karimireddy et al.
2022's heuristic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shoal import aggregate as ag
from shoal.attacks import alie, gaussian, ipm, label_flip, mimic, sign_flip

F = 5  # Byzantine clients tolerated (and present) in the grid
CLIP_ITERS = 3
SIGN_SCALE, IPM_EPS, GAUSS_SIGMA = 1.0, 0.1, 1.0


@dataclass(frozen=True)
class Preset:
    label: str
    make: Callable[[], Any] | None
    """A fresh attack / aggregator; ``None`` for the clean row (no Byzantine clients)."""
    setting: str


def attacks(num_classes: int = 10) -> dict[str, Preset]:
    """Command-line name -> attack; ``clean`` is the row without Byzantine clients; label flip
    maps the ``num_classes`` labels of the data to ``num_classes - 1 - y``."""
    top = num_classes - 1
    return {
        "clean": Preset("clean", None, "none (no Byzantine clients)"),
        "sign_flip": Preset("sign flip", lambda: sign_flip(SIGN_SCALE), f"scale {SIGN_SCALE}"),
        "label_flip": Preset("label flip", lambda: label_flip(num_classes), f"y -> {top} - y"),
        "gaussian": Preset(
            "gaussian", lambda: gaussian(sigma=GAUSS_SIGMA, seed=0), f"sigma {GAUSS_SIGMA}, seed 0"
        ),
        "alie": Preset("ALIE", lambda: alie(), "z = z_max(n, f) (Baruch et al. 2019)"),
        "ipm": Preset("IPM", lambda: ipm(IPM_EPS), f"eps {IPM_EPS} (Xie et al. 2020)"),
        "mimic": Preset("mimic", lambda: mimic(None), "most extreme honest client, per round"),
    }


def aggregators(tau: float) -> dict[str, Preset]:
    """Command-line name -> aggregator, with centered clipping's radius ``tau``."""

    def cc() -> Any:
        return ag.stateful(ag.centered_clip(tau=tau, num_iters=CLIP_ITERS))

    return {
        "mean": Preset("mean", ag.mean, "uniform weights"),
        "median": Preset("median", lambda: ag.median(F), "coordinate-wise (Yin et al. 2018)"),
        "trimmed_mean": Preset(
            "trimmed mean", lambda: ag.trimmed_mean(F), f"f={F} cut from each side"
        ),
        "krum": Preset("Krum", lambda: ag.krum(F), f"f={F} (Blanchard et al. 2017)"),
        "multi_krum": Preset("multi-Krum", lambda: ag.multi_krum(F), f"f={F}, m=n-f=20"),
        "geometric_median": Preset(
            "geo. median", ag.geometric_median, "RFA Weiszfeld, nu=1e-6, <=100 it, tol 1e-6"
        ),
        "cclip": Preset(
            "CClip", cc, f"stateful, tau={tau}, L={CLIP_ITERS} (Karimireddy et al. 2021)"
        ),
        "bulyan": Preset("Bulyan", lambda: ag.bulyan(F), f"f={F}, n>=4f+3=23 (El Mhamdi et al.)"),
        "bucketing_tm": Preset(
            "bucket+TM",
            lambda: ag.bucketing(ag.trimmed_mean(F), s=2, seed=0),
            f"s=2 (13 buckets), trimmed mean f={F} (Karimireddy et al. 2022)",
        ),
        "nnm_tm": Preset(
            "NNM+TM",
            lambda: ag.nnm(ag.trimmed_mean(F), F),
            f"NNM f={F}, then trimmed mean f={F} (Allouah et al. 2023)",
        ),
    }


QUICK_ATTACKS = ("sign_flip", "alie")
QUICK_AGGREGATORS = ("mean", "trimmed_mean", "cclip")


def pick(kind: str, known: dict[str, Preset], names: list[str] | None) -> dict[str, Preset]:
    """The presets named (all when ``names`` is None), in the order given; a clear error
    listing what exists for an unknown name, or for none at all (an empty list is not "all")."""
    if names is None:
        return dict(known)
    if not names:
        raise ValueError(f"no {kind} named; choose from: {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown {kind} {', '.join(repr(n) for n in unknown)}; choose from: {', '.join(known)}"
        )
    return {n: known[n] for n in dict.fromkeys(names)}
