"""Aggregation rules: ``(inbox_ND, weights_N) -> x_D``.

``mean`` is the only linear rule (the runtime streams it). The robust rules, for inboxes in
which up to ``f`` rows may be Byzantine:

==================================  ============================================  =============
factory                             rule (paper)                                  weights
==================================  ============================================  =============
``median(f=None)``                  coordinate-wise median (Yin et al. 2018)      ignored
``trimmed_mean(f)``                 coordinate-wise trimmed mean (Yin et al.)     ignored
``krum(f)``                         Krum (Blanchard et al. 2017)                  ignored
``multi_krum(f, m=None)``           Multi-Krum (Blanchard et al. 2017)            ignored
``geometric_median(...)``           smoothed Weiszfeld / RFA (Pillutla et al.)    used (alpha)
``centered_clip(tau, num_iters)``   centered clipping (Karimireddy et al. 2021)   ignored
``bulyan(f)``                       Bulyan over Krum (El Mhamdi et al. 2018)      ignored
``bucketing(agg, s, seed)``         bucketing (Karimireddy et al. 2022)           bucket means
``nnm(agg, f)``                     nearest-neighbour mixing (Allouah et al.)     passed on
``flag_aggregator(r, lam)``         Flag Aggregator (Almasi et al. 2024)          ignored
``monna(f)``                        MoNNA's NNA step, peer-to-peer (Farhadkhani)  ignored
==================================  ============================================  =============

``monna`` takes the worker's own vector first: ``monna(f)(own_D, inbox_ND)``. Centered clipping
carries state between rounds: explicit ``init``/``update``, or ``stateful(centered_clip())`` for
the runtime.
"""

from shoal.aggregate.base import Aggregator, NonFiniteInbox, StatefulAggregator
from shoal.aggregate.bulyan import Bulyan, bulyan
from shoal.aggregate.clipping import CenteredClip, ClipState, centered_clip
from shoal.aggregate.coordinate import Median, TrimmedMean, median, trimmed_mean
from shoal.aggregate.distance import Krum, krum, multi_krum
from shoal.aggregate.flag import FlagAggregator, flag_aggregator
from shoal.aggregate.geomed import GeometricMedian, geometric_median
from shoal.aggregate.mean import Mean, mean
from shoal.aggregate.monna import MoNNA, monna
from shoal.aggregate.preagg import Bucketing, NearestNeighborMixing, bucketing, nnm
from shoal.aggregate.stateful import Stateful, stateful

__all__ = [
    "Aggregator",
    "Bucketing",
    "Bulyan",
    "CenteredClip",
    "ClipState",
    "FlagAggregator",
    "GeometricMedian",
    "Krum",
    "Mean",
    "Median",
    "MoNNA",
    "NearestNeighborMixing",
    "NonFiniteInbox",
    "Stateful",
    "StatefulAggregator",
    "TrimmedMean",
    "bucketing",
    "bulyan",
    "centered_clip",
    "flag_aggregator",
    "geometric_median",
    "krum",
    "mean",
    "median",
    "monna",
    "multi_krum",
    "nnm",
    "stateful",
    "trimmed_mean",
]
