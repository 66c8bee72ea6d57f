"""PowerSGD: protocol details (the dense rule's tie, cold start in the two-round
protocol, error feedback's two-round path), checked against a hand-written reference."""

from __future__ import annotations

import torch
from compress_helpers import gen

from shoal.compress import error_feedback, powersgd


def test_a_matrix_at_the_compression_rate_tie_travels_dense() -> None:
    """PyTorch's ``_should_compress``: compress only when ``(n + m) r * min_rate < n m``.
    4 x 4, r = 1, rate 2: 16 == 16, dense; 5 x 4: 18 < 20, factored."""
    x = torch.randn(16 + 20, generator=gen(0))
    c = powersgd([(4, 4), (5, 4)], rank=1, min_compression_rate=2.0)
    payload, _ = c.compress(x, c.init(x))
    assert set(payload) == {"dense", "p1", "q1"}
    assert torch.equal(payload["dense"], x[:16])
    assert payload["p1"].shape == (5, 1) and payload["q1"].shape == (4, 1)


def test_cold_start_with_query_keeps_the_seeds_query() -> None:
    """``warm_start=False``: the all-reduced Q must not become the next query."""
    shapes = [(6, 5)]
    x = torch.randn(30, generator=gen(1))
    cold = powersgd(shapes, rank=1, min_compression_rate=0, warm_start=False, seed=3)
    state = cold.init(x)
    summed = {"p0": torch.randn(6, 1, generator=gen(2)), "q0": torch.randn(5, 1, generator=gen(3))}
    kept = cold.with_query(state, summed)
    assert torch.equal(kept["q0"], state["q0"])
    assert torch.equal(cold.project(x, kept)["p0"], cold.project(x, state)["p0"])


def reference_step(m: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One PowerSGD step on matrix m with query q (Vogels et al. 2019, Algorithm 1)."""
    p = torch.linalg.qr(m @ q, mode="reduced").Q
    return p, m.T @ p


def test_error_feedback_two_round_path_uses_the_residual_in_both_rounds() -> None:
    """One worker, two steps of project / complete / with_query under error feedback, against
    ``a = x + e; P = orth(a Q); Q' = a^T P; e' = a - P Q'^T`` computed by hand."""
    n, m = 8, 6
    ef = error_feedback(powersgd([(n, m)], rank=2, min_compression_rate=0, seed=5))
    xs = [torch.randn(n * m, generator=gen(10 + t), dtype=torch.float64) for t in range(2)]
    state = ef.init(xs[0])
    q = state["inner"]["q0"].clone()
    e = torch.zeros(n, m, dtype=torch.float64)
    for x in xs:
        summed = ef.project(x, state)  # one worker: its own P is the sum
        payload, state = ef.complete(x, summed, state)
        state = ef.with_query(state, payload)
        a = x.view(n, m) + e
        p, q = reference_step(a, q)
        e = a - p @ q.T
        torch.testing.assert_close(payload["p0"], p)
        torch.testing.assert_close(payload["q0"], q)
        torch.testing.assert_close(state["residual"].view(n, m), e)
        torch.testing.assert_close(ef.decompress(payload).view(n, m) + e, a)


def test_cold_start_two_round_workers_share_each_steps_fresh_query() -> None:
    """Two workers run the two-round all-reduce with ``warm_start=False``: after a step both
    hold the same fresh query (not their own Q, which ``complete`` once stored), so the next
    round-1 sum is ``(M_1 + M_2) Q`` as the protocol needs."""
    c = powersgd([(6, 5)], rank=1, min_compression_rate=0, warm_start=False, seed=3)
    xs = [torch.randn(30, generator=gen(20 + w)) for w in range(2)]
    states = [c.init(x) for x in xs]
    seed_query = states[0]["q0"].clone()
    summed = c.sum_payloads([c.project(x, s) for x, s in zip(xs, states)])
    done = [c.complete(x, summed, s) for x, s in zip(xs, states)]
    total = c.sum_payloads([p for p, _ in done])
    states = [c.with_query(s, total) for _, s in done]
    fresh = states[0]["q0"]
    assert torch.equal(states[1]["q0"], fresh) and not torch.equal(fresh, seed_query)
    assert not torch.equal(fresh, total["q0"])  # not the all-reduced Q: a cold start
    summed = c.sum_payloads([c.project(x, s) for x, s in zip(xs, states)])
    torch.testing.assert_close(summed["p0"], (xs[0] + xs[1]).view(6, 5) @ fresh)
