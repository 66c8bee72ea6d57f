"""Centered clipping: NumPy reference, the large-tau limit, and the three ways to hold state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.aggregate import ClipState, StatefulAggregator, centered_clip, stateful


def cclip_ref(x, v, tau, num_iters):
    for _ in range(num_iters):
        step = np.zeros_like(v)
        for xi in x:
            diff = xi - v
            norm = np.linalg.norm(diff)
            step += diff * (min(1.0, tau / norm) if norm > 0 else 1.0)
        v = v + step / len(x)
    return v


@pytest.mark.parametrize(("tau", "num_iters"), [(0.5, 1), (1.0, 3), (2.0, 5)])
def test_matches_reference(tau: float, num_iters: int) -> None:
    rng = np.random.default_rng(num_iters)
    x, v0 = rng.normal(size=(8, 5)) * 2, rng.normal(size=5)
    got = centered_clip(tau, num_iters)(torch.from_numpy(x), torch.ones(8), torch.from_numpy(v0))
    np.testing.assert_allclose(got.numpy(), cclip_ref(x, v0, tau, num_iters), rtol=1e-12)


def test_large_tau_is_the_mean() -> None:
    x = torch.randn(9, 4, dtype=torch.float64)
    center = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(centered_clip(tau=1e9)(x, torch.ones(9), center), x.mean(dim=0))
    torch.testing.assert_close(centered_clip(tau=1e9, num_iters=1)(x, torch.ones(9)), x.mean(0))


def test_outlier_moves_the_center_by_at_most_tau_over_n() -> None:
    x = torch.zeros(10, 3, dtype=torch.float64)
    x[0] = 1e9
    out = centered_clip(tau=1.0, num_iters=3)(x, torch.ones(10), torch.zeros(3))
    assert float(out.norm()) <= 3 * 1.0 / 10 + 1e-12


def test_a_huge_finite_row_is_clipped_not_dropped() -> None:
    """Its float32 norm overflowed (1e19s in 1000 coordinates: 3e20 is a float32), tau / inf
    gave scale 0, and the row's clipped share (norm tau) was missing from the step."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1000, generator=g)
    x[0] = 1e19
    got = centered_clip(tau=1.0, num_iters=1)(x, torch.ones(5))
    want = cclip_ref(x.double().numpy(), np.zeros(1000), 1.0, 1)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-7)


def test_a_row_whose_distance_is_beyond_float32_is_clipped_not_dropped() -> None:
    """1e37s in 10,000 coordinates: the distance (1e39) is no float32 at all, so the float64
    fallback of the norm still rounded it to inf, and tau / inf = 0 dropped the row."""
    x = torch.full((5, 10_000), 0.01)
    x[0] = 1e37
    got = centered_clip(tau=1.0, num_iters=1)(x, torch.ones(5))
    want = cclip_ref(x.double().numpy(), np.zeros(10_000), 1.0, 1)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5)


def test_explicit_state_and_stateful_wrapper_agree() -> None:
    cc = centered_clip(tau=0.7, num_iters=2)
    assert isinstance(cc, StatefulAggregator)
    rounds = [torch.randn(6, 4, dtype=torch.float64) + t for t in range(3)]
    w = torch.ones(6)

    state = cc.init(rounds[0][0])
    assert isinstance(state, ClipState) and torch.equal(state.center, torch.zeros(4).double())
    explicit = []
    for x in rounds:
        out, state = cc.update(x, w, state)
        explicit.append(out)
        assert torch.equal(state.center, out)

    wrapped = stateful(cc)
    assert wrapped.linear is False
    for x, want in zip(rounds, explicit):
        torch.testing.assert_close(wrapped(x, w), want)

    # The pure call with the previous output as center is the same rule.
    torch.testing.assert_close(cc(rounds[1], w, explicit[0]), explicit[1])
    wrapped.reset()
    torch.testing.assert_close(wrapped(rounds[0], w), explicit[0])


def test_stateful_refuses_a_second_message_stream() -> None:
    wrapped = stateful(centered_clip())
    wrapped(torch.randn(5, 4), torch.ones(5))
    with pytest.raises(ValueError, match="one stateful"):
        wrapped(torch.randn(5, 1), torch.ones(5))
    with pytest.raises(TypeError, match="init/update"):
        stateful(object())


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="tau"):
        centered_clip(tau=0)
    with pytest.raises(ValueError, match="num_iters"):
        centered_clip(num_iters=0)
    with pytest.raises(ValueError, match="center has 3 entries"):
        centered_clip()(torch.randn(4, 2), torch.ones(4), torch.zeros(3))
