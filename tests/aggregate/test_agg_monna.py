"""MoNNA's nearest-neighbour averaging around the worker's own vector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.aggregate import monna


def monna_ref(own: np.ndarray, inbox: np.ndarray, f: int) -> np.ndarray:
    pool = np.concatenate([own[None], inbox])
    d2 = [np.sum((p - own) ** 2) for p in pool]
    near = sorted(range(len(pool)), key=lambda j: d2[j])[: len(pool) - f]
    assert 0 in near
    return pool[near].mean(axis=0)


@pytest.mark.parametrize(("num_neighbors", "f"), [(4, 0), (6, 3), (10, 2)])
def test_matches_reference(num_neighbors: int, f: int) -> None:
    rng = np.random.default_rng(num_neighbors + f)
    own, inbox = rng.normal(size=5), rng.normal(size=(num_neighbors, 5))
    got = monna(f)(torch.from_numpy(own), torch.from_numpy(inbox))
    np.testing.assert_allclose(got.numpy(), monna_ref(own, inbox, f), rtol=1e-12)


def test_batched_over_workers_equals_one_at_a_time() -> None:
    own = torch.randn(4, 6, dtype=torch.float64)
    inbox = torch.randn(4, 7, 6, dtype=torch.float64)
    batched = monna(2).batched(own, inbox)
    for w in range(4):
        torch.testing.assert_close(batched[w], monna(2)(own[w], inbox[w]))


def test_far_neighbours_are_dropped() -> None:
    own = torch.zeros(3, dtype=torch.float64)
    inbox = torch.cat([torch.full((2, 3), 1e6), 0.01 * torch.ones(4, 3)]).double()
    torch.testing.assert_close(monna(2)(own, inbox), torch.full((3,), 0.008, dtype=torch.float64))


def test_requirement_counts_the_worker_itself() -> None:
    with pytest.raises(ValueError, match=r"monna needs n >= 2f\+1 .*got n=5, f=3"):
        monna(3)(torch.zeros(2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="does not match"):
        monna(1)(torch.zeros(3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="do not match"):
        monna(1).batched(torch.zeros(2, 3), torch.randn(3, 4, 3))


def test_a_matrix_own_is_refused_and_other_row_shapes_are_one_worker() -> None:
    """A [2, 3] own with two neighbours was read as two workers' vectors (and the old
    all-workers call, as one worker's matrix): both readings fit, so it is refused."""
    with pytest.raises(ValueError, match=r"is ambiguous .*monna\(f\)\.batched"):
        monna(1)(torch.randn(2, 3), torch.randn(2, 2, 3))
    own = torch.randn(2, 3, 2, dtype=torch.float64)
    inbox = torch.randn(2, 2, 3, 2, dtype=torch.float64)
    flat = monna(1)(own.reshape(-1), inbox.reshape(2, -1))
    torch.testing.assert_close(monna(1)(own, inbox), flat.reshape(2, 3, 2), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("scale", "dtype"),
    [
        (1e20, torch.float32),
        (1e-30, torch.float32),
        (1e200, torch.float64),
        (1e-200, torch.float64),
    ],
)
def test_distances_do_not_overflow_or_underflow_in_their_squares(scale, dtype) -> None:
    """Squared distances were summed in the input dtype: all inf (float32 vectors 1e20 apart)
    or all 0 (1e-30), so every neighbour tied and far ones (5, 6) were averaged in."""
    own = torch.zeros(2, 3, dtype=dtype)
    inbox = torch.tensor([[5.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [6.0, 0, 0]], dtype=torch.float64)
    inbox = (inbox * scale).to(dtype).expand(2, 4, 3)
    want = inbox[0, 1:3].sum(dim=0) / 3  # own, 1 and 3: the n - f = 3 nearest (atol=0: tiny)
    torch.testing.assert_close(monna(2)(own[0], inbox[0]), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(monna(2).batched(own, inbox), want.expand(2, 3), rtol=1e-6, atol=0)


def test_a_node_without_neighbours_keeps_its_own_vector() -> None:
    """n = 1, f = 0: the batched form [W, 0, D] did; the plain one failed in a reshape."""
    own = torch.randn(3)
    assert torch.equal(monna(0)(own, torch.randn(0, 3)), own)
    with pytest.raises(ValueError, match="does not match"):
        monna(0)(own, torch.randn(0, 4))
