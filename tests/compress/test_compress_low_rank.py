"""PowerSGD: full rank reproduces the input, blocks, warm start, the all-reduce protocol."""

from __future__ import annotations

import math

import pytest
import torch
from compress_helpers import gen
from torch import nn

from shoal.compress import error_feedback, powersgd
from shoal.functional import ParamSpec

SHAPES = [torch.Size([12, 5]), torch.Size([12]), torch.Size([6, 3, 3, 3]), torch.Size([4, 9])]
D = sum(math.prod(s) for s in SHAPES)


def blocks(x: torch.Tensor) -> list[torch.Tensor]:
    out, at = [], 0
    for s in SHAPES:
        n = math.prod(s)
        out.append(x[at : at + n].view(s))
        at += n
    return out


def test_full_rank_reproduces_the_input() -> None:
    x = torch.randn(D, generator=gen(0))
    c = powersgd(SHAPES, rank=12, min_compression_rate=0)  # rank >= min(n, m) of every block
    payload, _ = c.compress(x, c.init(x))
    assert torch.allclose(c.decompress(payload), x, atol=1e-4, rtol=0)


def test_low_rank_matrices_are_recovered_and_1d_blocks_are_dense() -> None:
    g = gen(1)
    parts = [
        torch.randn(12, 2, generator=g) @ torch.randn(2, 5, generator=g),
        torch.randn(12, generator=g),
        (torch.randn(6, 2, generator=g) @ torch.randn(2, 27, generator=g)).view(6, 3, 3, 3),
        torch.randn(4, 2, generator=g) @ torch.randn(2, 9, generator=g),
    ]
    x = torch.cat([p.reshape(-1) for p in parts])
    c = powersgd(SHAPES, rank=2, min_compression_rate=0)
    payload, _ = c.compress(x, c.init(x))
    y = c.decompress(payload)
    assert torch.allclose(y, x, atol=1e-4)
    assert torch.equal(blocks(y)[1], parts[1])  # the bias travels as it is
    # a conv kernel [out, in, kh, kw] is the matrix [out, in*kh*kw]: P [6, r], Q [27, r]
    assert payload["p2"].shape == (6, 2) and payload["q2"].shape == (27, 2)
    assert set(payload) == {"p0", "q0", "p2", "q2", "p3", "q3", "dense"}


def test_rank_r_projection_and_byte_count() -> None:
    x = torch.randn(D, generator=gen(2))
    c = powersgd(SHAPES, rank=1, min_compression_rate=0)
    payload, _ = c.compress(x, c.init(x))
    y = blocks(c.decompress(payload))
    for i in (0, 2, 3):
        m = blocks(x)[i].reshape(SHAPES[i][0], -1)
        p = payload[f"p{i}"]
        assert torch.allclose(p.T @ p, torch.eye(1), atol=1e-5)  # orthonormal P
        assert torch.allclose(y[i].reshape(m.shape), p @ p.T @ m, atol=1e-5)  # P P^T M
    floats = sum((s[0] + math.prod(s) // s[0]) * 1 for s in SHAPES if len(s) > 1) + 12
    framing = 2 + sum(3 + len(k) + 4 * t.dim() for k, t in payload.items())
    assert c.nbytes(payload) == 4 * floats + framing  # (n + m) r floats per matrix


def test_min_compression_rate_sends_small_matrices_dense() -> None:
    # (n + m) r * rate < n m: [12, 5] with r = 2: 34 * 2 = 68 >= 60 -> dense; [6, 27]: 66 < 162
    c = powersgd(SHAPES, rank=2, min_compression_rate=2.0)
    x = torch.randn(D, generator=gen(3))
    payload, _ = c.compress(x, c.init(x))
    assert "p0" not in payload and "p2" in payload
    assert payload["dense"].numel() == 60 + 12 + 0 + 36  # [4, 9]: 26 * 2 * 2 = 104 >= 36


def test_warm_start_converges_to_the_top_singular_subspace() -> None:
    """Repeated compression of the same matrix is subspace (power) iteration with the warm Q."""
    g = gen(4)
    u, _ = torch.linalg.qr(torch.randn(12, 5, generator=g))
    v, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    m = u @ torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.5, 0.1])) @ v.T
    shapes = [torch.Size([12, 5])]
    c = powersgd(shapes, rank=2, min_compression_rate=0)
    x = m.reshape(-1)
    state = c.init(x)
    for _ in range(30):
        payload, state = c.compress(x, state)
    best = u[:, :2] @ torch.diag(torch.tensor([10.0, 5.0])) @ v[:, :2].T
    assert torch.allclose(c.decompress(payload).view(12, 5), best, atol=1e-3)


def test_all_reduce_protocol_sums_are_homomorphic() -> None:
    """Round 1: sum of ``M_i Q`` equals ``(sum M_i) Q``; round 2 with the shared P:
    ``decompress(sum)`` equals the sum of decompressions and ``P P^T sum M_i``. Both up to
    float rounding (matmul of sums vs sum of matmuls); the dense part bit for bit."""
    c = powersgd(SHAPES, rank=2, min_compression_rate=0, seed=7)
    xs = [torch.randn(D, generator=gen(10 + w)) for w in range(3)]
    states = [c.init(x) for x in xs]  # same seed: the same Q on every worker
    assert all(torch.equal(states[0][k], s[k]) for s in states for k in s)
    rounds1 = [c.project(x, s) for x, s in zip(xs, states)]
    p_sum = c.sum_payloads(rounds1)
    total = xs[0] + xs[1] + xs[2]
    direct = c.project(total, states[0])
    for k in p_sum:
        assert torch.allclose(p_sum[k], direct[k], atol=1e-5)
    rounds2 = []
    for i, (x, s) in enumerate(zip(xs, states)):
        msg, states[i] = c.complete(x, p_sum, s)
        rounds2.append(msg)
    summed = c.sum_payloads(rounds2)
    y = c.decompress(summed)
    parts = [c.decompress(m) for m in rounds2]
    assert torch.allclose(y, parts[0] + parts[1] + parts[2], atol=1e-5)
    assert torch.equal(
        summed["dense"], rounds2[0]["dense"] + rounds2[1]["dense"] + rounds2[2]["dense"]
    )
    # and the sum is the rank-r projection of the summed input onto the shared P
    for i in (0, 2, 3):
        m = blocks(total)[i].reshape(SHAPES[i][0], -1)
        p = summed[f"p{i}"]
        assert torch.allclose(blocks(y)[i].reshape(m.shape), p @ p.T @ m, atol=1e-4)
    # warm start from the summed Q: every worker has the same next query again
    nxt = [c.with_query(s, summed) for s in states]
    assert all(torch.equal(nxt[0][k], s[k]) for s in nxt for k in s)


def test_payloads_with_different_p_cannot_be_summed() -> None:
    c = powersgd(SHAPES, rank=2, min_compression_rate=0)
    xs = [torch.randn(D, generator=gen(20 + w)) for w in range(2)]
    msgs = [c.compress(x, c.init(x))[0] for x in xs]
    with pytest.raises(ValueError, match="share P"):
        c.sum_payloads(msgs)
    with pytest.raises(ValueError, match="round-1"):
        c.decompress(c.project(xs[0], c.init(xs[0])))


def test_error_feedback_powersgd_conserves_to_rounding_and_takes_param_spec_shapes() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    spec = ParamSpec.of(model)
    c = error_feedback(powersgd(spec.shapes, rank=1))
    x = spec.flatten(model)
    state = c.init(x)
    for _ in range(3):
        acc = x + state["residual"]
        payload, state = c.compress(x, state)
        assert torch.allclose(c.decompress(payload) + state["residual"], acc, atol=1e-6)


def test_power_iterations_in_one_call_equal_as_many_warm_started_calls() -> None:
    """k iterations in one compress = k calls that warm-start from each other (the same
    subspace iteration), and many of them give the truncated SVD of the matrix."""
    g = gen(5)
    u, _ = torch.linalg.qr(torch.randn(12, 5, generator=g))
    v, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    m = u @ torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.5, 0.1])) @ v.T
    x = m.reshape(-1).to(torch.float64)
    shapes = [torch.Size([12, 5])]
    for k in (2, 3):
        warm = powersgd(shapes, rank=2, min_compression_rate=0)
        state = warm.init(x)
        for _ in range(k):
            calls, state = warm.compress(x, state)
        cold = powersgd(shapes, rank=2, min_compression_rate=0, power_iterations=k)
        once, _ = cold.compress(x, cold.init(x))
        torch.testing.assert_close(
            cold.decompress(once), warm.decompress(calls), rtol=0, atol=1e-12
        )
    many = powersgd(shapes, rank=2, min_compression_rate=0, power_iterations=40)
    payload, _ = many.compress(x, many.init(x))
    svd_u, svd_s, svd_vh = torch.linalg.svd(m.to(torch.float64))
    best = svd_u[:, :2] @ torch.diag(svd_s[:2]) @ svd_vh[:2]
    torch.testing.assert_close(many.decompress(payload).view(12, 5), best, rtol=0, atol=1e-9)
    assert many.name == "powersgd(rank=2, power_iterations=40)"


def test_cold_start_draws_a_fresh_shared_query_every_step() -> None:
    """PyTorch's ``warm_start=False``: a new query each step ("this seed should differ at
    every step"), the same on every worker; the first is the seed's, as a warm start's."""
    x = torch.randn(D, generator=gen(6))
    cold = powersgd(SHAPES, rank=2, min_compression_rate=0, warm_start=False)
    warm = powersgd(SHAPES, rank=2, min_compression_rate=0)
    first, after = cold.compress(x, cold.init(x))
    from_seed, _ = warm.compress(x, warm.init(x))
    for key in first:
        assert torch.equal(first[key], from_seed[key])
    second, later = cold.compress(x, after)
    again, _ = cold.compress(x, cold.compress(x, cold.init(x))[1])  # another worker
    assert int(after["step"]) == 1 and int(later["step"]) == 2
    assert not torch.equal(after["q0"], cold.init(x)["q0"])
    assert not torch.equal(second["p0"], first["p0"])
    for key in second:
        assert torch.equal(second[key], again[key])
    other_seed, _ = cold.compress(x, cold.compress(x, cold.init(x, seed=1))[1])
    assert not torch.equal(other_seed["p0"], second["p0"])
    assert cold.name == "powersgd(rank=2, warm_start=False)"


def test_a_cold_start_state_from_before_fresh_queries_goes_on() -> None:
    """A checkpointed state of the seed's-query-every-step version has no seed and step: its
    first compress failed ("state must come from init")."""
    x = torch.randn(D, generator=gen(8))
    cold = powersgd(SHAPES, rank=2, min_compression_rate=0, warm_start=False)
    fresh = cold.init(x)
    old = {k: v for k, v in fresh.items() if k not in ("seed", "step")}
    payload, after = cold.compress(x, old)
    want, _ = cold.compress(x, fresh)
    assert all(torch.equal(payload[k], want[k]) for k in want)
    assert int(after["step"]) == 1


@pytest.mark.parametrize("power_iterations", [1, 2])
def test_cold_start_under_error_feedback_sends_the_residual(power_iterations: int) -> None:
    """With the same query every step, the residual (I - P P^T) M is orthogonal to Q after one
    iteration, so P = orth(M Q) never saw it: 60 steps on a rank-4 matrix grew it to 47x the
    input (PyTorch draws a fresh query per step; a warm start stays near 2.5x)."""
    g = torch.Generator().manual_seed(0)
    m = (torch.randn(32, 4, generator=g) @ torch.randn(4, 32, generator=g)).reshape(-1)
    ef = error_feedback(
        powersgd([(32, 32)], 1, 0, power_iterations=power_iterations, warm_start=False)
    )
    state = ef.init(m)
    for _ in range(60):
        _, state = ef.compress(m, state)
    assert state["residual"].norm() < 5 * m.norm()


def test_validation() -> None:
    with pytest.raises(ValueError, match="power_iterations"):
        powersgd(SHAPES, power_iterations=0)
    with pytest.raises(ValueError, match="warm_start"):
        powersgd(SHAPES, warm_start="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank"):
        powersgd(SHAPES, rank=0)
    with pytest.raises(ValueError, match="shapes"):
        powersgd([])
    with pytest.raises(ValueError, match="min_compression_rate"):
        powersgd(SHAPES, min_compression_rate=-1)
    c = powersgd(SHAPES)
    with pytest.raises(ValueError, match="entries"):
        c.init(torch.zeros(D + 1))
    with pytest.raises(ValueError, match="negative sizes"):
        powersgd([(-2, 3), (3, 4)])


def test_wrong_input_or_state_is_a_clear_error_on_every_path() -> None:
    """The length is checked before the local power iterations run, and a state that is not
    this input's init (missing, or another dtype) is named, not a KeyError or a matmul error."""
    x = torch.randn(D, generator=gen(1))
    for c in (powersgd(SHAPES, 2), powersgd(SHAPES, 2, power_iterations=2)):
        with pytest.raises(ValueError, match="entries"):
            c.compress(torch.zeros(D + 1), c.init(x))
        with pytest.raises(ValueError, match="must come from init"):
            c.compress(x, {})
        with pytest.raises(ValueError, match="float32 queries"):
            c.compress(x.double(), c.init(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_compressed_in_its_dtype(dtype: torch.dtype) -> None:
    """torch has no QR for half precision: it runs in float32, and the message and the
    decompressed vector keep the input's dtype. Full rank still reproduces the input."""
    x = torch.randn(D, generator=gen(2))
    c = powersgd(SHAPES, rank=12, min_compression_rate=0)
    payload, _ = c.compress(x.to(dtype), c.init(x.to(dtype)))
    assert all(t.dtype == dtype for t in payload.values())
    y = c.decompress(payload)
    assert y.dtype == dtype
    x_half = x.to(dtype).float()
    assert float((y.float() - x_half).norm() / x_half.norm()) < 0.02  # bf16: 8 mantissa bits


@pytest.mark.parametrize("power_iterations", [1, 2])
def test_a_non_finite_input_does_not_poison_the_warm_start(power_iterations: int) -> None:
    """P = M Q: a query from one M with an inf entry was NaN, and so was every later message,
    however finite its input. The query of such a step is not kept; that message is NaN."""
    x = torch.randn(D, generator=gen(8))
    bad = x.clone()
    bad[0] = math.inf  # in the first (compressed) block
    c = powersgd(SHAPES, rank=2, min_compression_rate=0, power_iterations=power_iterations)
    _, state = c.compress(x, c.init(x))
    broken, after = c.compress(bad, state)
    assert c.decompress(broken)[: SHAPES[0].numel()].isnan().all()
    assert torch.equal(after["q0"], state["q0"])  # that block's last finite query
    payload, _ = c.compress(x, after)
    expected, _ = c.compress(x, state)
    assert torch.equal(payload["p0"], expected["p0"]) and torch.equal(payload["q0"], expected["q0"])
    assert c.decompress(payload).isfinite().all()


def test_an_all_zero_block_does_not_stall_the_warm_start() -> None:
    """Q = M^T P = 0 from one all-zero block, then P = M 0 = 0, whose orthogonalization is
    the first unit vectors: every later message kept only M's first r rows. With those rows
    zero (dead units) nothing was sent ever after, and error feedback's residual grew."""
    c = powersgd([(30, 20)], rank=2)
    zero = torch.zeros(600)
    _, state = c.compress(zero, c.init(zero))
    assert torch.equal(state["q0"], c.init(zero)["q0"])  # the seed's query kept, not 0
    m = torch.randn(30, 20, generator=gen(9))
    m[:2] = 0
    payload, _ = c.compress(m.reshape(-1), state)
    fresh, _ = c.compress(m.reshape(-1), c.init(zero))  # as if the zero block never was
    assert torch.equal(c.decompress(payload), c.decompress(fresh))
    assert c.decompress(payload).ne(0).any()


def test_an_all_zero_sum_of_queries_is_not_taken_as_the_warm_start() -> None:
    c = powersgd([(30, 20)], rank=2)
    state = c.init(torch.zeros(600))
    assert torch.equal(c.with_query(state, {"q0": torch.zeros(20, 2)})["q0"], state["q0"])
