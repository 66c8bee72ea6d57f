"""shoal.data.load_digits against scikit-learn's own split, redone here: the documented
stratified, seeded split, each part in the source order, pixels divided by 16; fractions
outside (0, 1) are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.data import load_digits


@pytest.mark.parametrize(("fraction", "seed"), [(0.2, 0), (0.5, 3)])
def test_digits_are_sklearns_stratified_split_in_source_order(fraction: float, seed: int) -> None:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    idx_train, idx_test = train_test_split(
        np.arange(len(bunch.target)), test_size=fraction, random_state=seed, stratify=bunch.target
    )
    ds = load_digits(test_fraction=fraction, seed=seed)
    for part, idx in ((ds.train, np.sort(idx_train)), (ds.test, np.sort(idx_test))):
        expected = torch.tensor(bunch.images[idx] / 16.0, dtype=torch.float32).unsqueeze(1)
        torch.testing.assert_close(part.x, expected, rtol=0, atol=0)
        assert part.y.tolist() == bunch.target[idx].tolist()
        assert part.num_classes == 10


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_a_test_fraction_outside_0_1_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction must be in"):
        load_digits(test_fraction=fraction)
