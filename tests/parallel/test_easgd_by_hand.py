"""EASGD and EAMSGD step by step against the paper's synchronous update written out by hand."""

from __future__ import annotations

import pytest
import torch

from shoal.parallel import SimComm, eamsgd, easgd

from .cases import Quadratic, ZeroGrad, push_sum_start


@pytest.mark.parametrize(
    ("momentum", "alpha", "tau"),
    [(0.0, 0.2, 2), (0.9, 0.2, 2), (0.0, None, 1), (0.5, None, 3)],
)
def test_elastic_averaging_by_hand(momentum, alpha, tau):
    """Zhang et al. 2015 (Algorithms 1 and 2, synchronous): at steps 0, tau, 2 tau, ...
    ``d_i = alpha (x_i - c)``, ``c <- c + sum_i d_i``; every step the local step (plain, or
    Nesterov ``v <- delta v - lr g(x + delta v)``, ``x <- x + v``), then ``x_i <- x_i - d_i``.
    The default ``alpha`` is ``0.9 / p``."""
    n, lr, steps = 3, 0.1, 7
    grad = Quadratic(push_sum_start(n + 1)[1:])
    alg = eamsgd(lr, tau, alpha, momentum) if momentum else easgd(lr, tau, alpha)
    comm = SimComm(n)
    x = push_sum_start(n)
    state = alg.init(x, comm)
    a = alpha if alpha is not None else 0.9 / n
    ref_x, ref_v, ref_c = x.clone(), torch.zeros_like(x), x[0].clone()
    for t in range(steps):
        x, state = alg.step(x, grad, state, comm, t)
        d = a * (ref_x - ref_c) if t % tau == 0 else torch.zeros_like(ref_x)
        ref_c = ref_c + d.sum(0)
        if momentum:
            ref_v = momentum * ref_v - lr * grad(ref_x + momentum * ref_v)
            ref_x = ref_x + ref_v
        else:
            ref_x = ref_x - lr * grad(ref_x)
        ref_x = ref_x - d
        torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-10, msg=f"step {t}")
        torch.testing.assert_close(alg.model(x, state), ref_c, rtol=0, atol=1e-10)


def test_synchronous_easgd_refuses_a_moving_rate_that_diverges():
    """With zero gradients the gap ``e = mean_i(x_i) - c`` becomes ``(1 - (p + 1) alpha) e`` at
    every exchange, so ``alpha >= 2 / (p + 1)`` never reaches consensus: alpha = 0.3 on 8
    workers (beta = 2.4) sent the centre to 1e12 in 50 steps without a gradient."""
    comm = SimComm(8)
    with pytest.raises(ValueError, match=r"alpha < 2 / \(p \+ 1\) = 0\.222"):
        easgd(0.1, alpha=0.3).init(push_sum_start(8), comm)
    alg = easgd(0.1, alpha=0.2)  # 1 - 9 * 0.2 = -0.8: the gap shrinks, in alternating sign
    x = push_sum_start(8)
    state = alg.init(x, comm)
    for t in range(60):
        x, state = alg.step(x, ZeroGrad(), state, comm, t)
    torch.testing.assert_close(x, state["centre_1D"].expand_as(x), rtol=0, atol=1e-4)
