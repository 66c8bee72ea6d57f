"""FedProx's Synthetic(alpha, beta) and Synthetic-IID data (Li et al., MLSys 2020).

Generative process, as in litian96/FedProx ``data/synthetic_1_1/generate_synthetic.py``
(non-IID) and ``data/synthetic_iid/generate_iid.py`` (IID), for ``K`` users, ``d`` features
and ``C`` classes (30, 60, 10 in the paper)::

    n_k = int(lognormal(4, 2)) + 50                    # heavy-tailed user sizes
    u_k ~ N(0, alpha^2);  B_k ~ N(0, beta^2)           # numpy ``scale`` = standard deviation
    v_k ~ N(B_k, 1)^d                                  # user feature mean
    Sigma = diag(j^-1.2), j = 1..d
    W_k ~ N(u_k, 1)^{d x C};  b_k ~ N(u_k, 1)^C         # user labelling model
    x ~ N(v_k, Sigma);  y = argmax softmax(x W_k + b_k)
    per user: shuffle, first int(0.9 n_k) samples train, the rest test

IID variant: one ``W, b ~ N(0, 1)`` shared by all users and ``x ~ N(0, Sigma)``; ``alpha`` and
``beta`` are ignored, as in ``generate_iid.py``.

Note, faithful to the original: ``u_k`` is one scalar added to every entry of ``W_k`` and
``b_k``, so it adds the same amount to all ten logits of a sample and never changes the argmax.
``alpha`` therefore does not affect the labels (with the same seed, ``synthetic(0, b)`` and
``synthetic(5, b)`` give identical data; in float64 this holds while the shift's rounding stays
below the logits' gaps, up to about ``alpha = 1e11``: at ``1e14`` 7% of the labels differ);
users differ through ``beta`` (feature shift) and their own draws of ``v_k`` and ``W_k``.

Deviations from the original scripts, none of which changes the distribution:

- The scripts draw from numpy's unseeded global state and shuffle with Python's ``random``; here
  every draw comes from one ``np.random.default_rng(seed)``, in the scripts' order, so results
  are reproducible but not the numbers of the JSON files FedProx ships.
- ``x`` is drawn as ``v_k + sqrt(diag Sigma) * z`` rather than with ``multivariate_normal``;
  with a diagonal ``Sigma`` the two are the same distribution.
- ``y = argmax(x W + b)`` without the softmax, which is monotone; the script's unstabilised
  ``exp`` could overflow to NaN for very large logits, this cannot.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from shoal.checks import check_count, check_flag
from shoal.data.types import ArrayDataset, FederatedDataset


def feature_variances(dim: int = 60) -> np.ndarray:
    """The diagonal of Sigma: ``j ** -1.2`` for ``j = 1..dim``."""
    return np.power(np.arange(1, dim + 1, dtype=np.float64), -1.2)


def synthetic(
    alpha: float,
    beta: float,
    *,
    num_users: int = 30,
    dim: int = 60,
    num_classes: int = 10,
    iid: bool = False,
    seed: int = 0,
) -> FederatedDataset:
    """Generate Synthetic(alpha, beta) (or Synthetic-IID) with one natural client per user.

    ``beta`` controls how far the users' feature means drift apart; ``alpha`` is meant to
    control how much their labelling models differ but, in FedProx's process, cannot change any
    label (see the module docstring). ``synthetic(0, 0)`` still differs per user (``v_k``,
    ``W_k`` are drawn per user); only ``iid=True`` shares one model and one feature distribution.
    Features are float32 ``[N, dim]``; ``natural_clients[k]`` and ``natural_test_clients[k]``
    index user ``k``'s train and test samples.
    """
    if not (0 <= alpha < math.inf and 0 <= beta < math.inf):  # NaN made every label 0
        raise ValueError(f"alpha and beta must be finite and >= 0, got alpha={alpha}, beta={beta}")
    check_count(num_users, "num_users")
    check_count(dim, "dim")
    check_count(num_classes, "num_classes", least=2)
    check_flag(iid, "iid")  # "no" built the IID variant
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, num_users).astype(np.int64) + 50
    std_x = np.sqrt(feature_variances(dim))
    if iid:
        mean_x: np.ndarray = np.zeros((num_users, dim))
        shared_w = rng.normal(0, 1, (dim, num_classes))
        shared_b = rng.normal(0, 1, num_classes)
    else:
        mean_w = rng.normal(0, alpha, num_users)
        big_b = rng.normal(0, beta, num_users)
        mean_x = np.stack([rng.normal(big_b[k], 1, dim) for k in range(num_users)])

    xs, ys = [], []
    for k in range(num_users):
        if iid:
            w, b = shared_w, shared_b
        else:
            w = rng.normal(mean_w[k], 1, (dim, num_classes))
            b = rng.normal(mean_w[k], 1, num_classes)
        x = mean_x[k] + std_x * rng.standard_normal((int(sizes[k]), dim))
        xs.append(x)
        ys.append(np.argmax(x @ w + b, axis=1))

    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]] = {
        "train": ([], [], []),
        "test": ([], [], []),
    }
    offset = {"train": 0, "test": 0}
    for k in range(num_users):
        perm = rng.permutation(len(ys[k]))
        cut = int(0.9 * len(perm))
        for split, idx in (("train", perm[:cut]), ("test", perm[cut:])):
            px, py, pidx = parts[split]
            px.append(xs[k][idx])
            py.append(ys[k][idx])
            pidx.append(np.arange(offset[split], offset[split] + len(idx), dtype=np.int64))
            offset[split] += len(idx)

    def build(split: str) -> ArrayDataset:
        px, py, _ = parts[split]
        x = torch.from_numpy(np.concatenate(px).astype(np.float32))
        return ArrayDataset(x, torch.from_numpy(np.concatenate(py).astype(np.int64)), num_classes)

    name = "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})"
    return FederatedDataset(
        name,
        build("train"),
        build("test"),
        natural_clients=parts["train"][2],
        natural_test_clients=parts["test"][2],
    )
