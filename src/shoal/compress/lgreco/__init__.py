"""L-GreCo: a compression level per layer, chosen by a knapsack dynamic program.

Alimohammadi, Markov, Frantar, Alistarh, "L-GreCo: Layerwise-Adaptive Gradient Compression
for Efficient and Accurate Deep Learning", MLSys 2024 (arXiv:2210.17357; ``LGrCo/L-GreCo``,
``ResNet18/hooks/lgreco_hook.py``). Every ``period`` steps, for each compressed layer ``l``
(``dim > 1``; 1-D blocks travel dense, as in :func:`shoal.compress.layerwise`) and each
candidate level ``c`` (top-k density, QSGD levels or PowerSGD rank), measure the error
``e_l(c) = ||G_l - C_c(G_l)||_2`` and the size ``s_l(c)``, the exact bytes of the layer's
payload, then solve::

    minimize  sum_l s_l(c_l)   subject to   sum_l e_l(c_l) <= E_max = alpha * sum_l e_l(c0)

where ``c0`` is the uniform setting (``alpha = 1``, the paper's default: no worse than
uniform). Errors are discretised into ``buckets`` units of ``E_max / buckets`` (``buckets``
at most ``10**6``: the DP keeps ``L (buckets + 1)`` back-pointers), rounded *up*, and
``DP[l][b] = min_c DP[l-1][b - e_l(c)] + s_l(c)`` is solved in ``O(L C buckets)`` and
backtracked. Rounding up makes every choice the DP can return meet the real budget; it can
make the uniform setting itself look infeasible (by at most ``L`` units), so when the DP finds
nothing cheaper than uniform, uniform is kept: L-GreCo never sends more bytes than uniform.
A zero budget (uniform is lossless on every layer, e.g. on a zero gradient) admits only
lossless levels: each layer takes its cheapest one.
With ``alpha < 1`` the budget can be below every choice's error (after rounding up); then each
layer takes its least-error level, and the :class:`Allocation`'s ``error`` exceeds its
``budget``.

Deviations, named: the profile is taken on the vector being compressed at that step (wrap in
:func:`shoal.compress.error_feedback` to profile the accumulated gradient, the residual
included) rather than on the sum of the last 10 step gradients; each worker solves its own DP
(the reference solves it on rank 0 and broadcasts), so the payload carries the choice (one byte
per compressed layer) and any receiver decompresses it; PowerSGD's error is the best rank-r
error ``sqrt(sum_{i > r} sigma_i^2)`` (what the reference's ``svdvals`` option measures, and
what warm-started power iteration approaches; a layer whose rank changes keeps its query's
leading columns, so its warm start survives the change), while top-k and QSGD errors are
measured by compressing (QSGD: one seeded draw).

Modules: :mod:`.knapsack` (the DP), :mod:`.compressor` (:class:`LGreCo`), :mod:`.families`
(:func:`lgreco_top_k`, :func:`lgreco_qsgd`, :func:`lgreco_powersgd`).
"""

from shoal.compress.lgreco.compressor import Allocation, LGreCo
from shoal.compress.lgreco.families import lgreco_powersgd, lgreco_qsgd, lgreco_top_k
from shoal.compress.lgreco.knapsack import knapsack

__all__ = ["Allocation", "LGreCo", "knapsack", "lgreco_powersgd", "lgreco_qsgd", "lgreco_top_k"]
