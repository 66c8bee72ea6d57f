"""Per-worker randomness: stochastic rounding is independent across clients, shared seeds stay
shared (random-k's indices, PowerSGD's query), and both hold through the uplink in training."""

from __future__ import annotations

import pytest
import torch

from shoal.compress import (
    Compressor,
    count_sketch,
    dgc_top_k,
    error_feedback,
    init_for_worker,
    layerwise,
    natural_compression,
    powersgd,
    qsgd,
    random_k,
    terngrad,
    threshold,
)
from shoal.runtime.transmit import transmit, transmit_each

D = 256
SHAPES = [torch.Size([16, 16])]


def _x() -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(0))


def _first_message(c: Compressor, worker: int) -> torch.Tensor:
    x = _x()
    payload, _ = c.compress(x, init_for_worker(c, x, worker))
    return c.decompress(payload)


STOCHASTIC = [
    qsgd(2),
    terngrad(),
    natural_compression(),
    error_feedback(natural_compression()),  # stochastic and contractive: no warning
    layerwise(terngrad(), SHAPES),
]


def test_two_clients_round_the_same_vector_differently() -> None:
    for c in STOCHASTIC:
        a, b = _first_message(c, 3), _first_message(c, 4)
        assert not torch.equal(a, b), c.name
        assert torch.equal(a, _first_message(c, 3)), c.name  # yet each is reproducible


def test_a_client_stream_depends_on_its_use_count() -> None:
    c, x = qsgd(2), _x()
    state = init_for_worker(c, x, 5)
    first, state = c.compress(x, state)
    second, _ = c.compress(x, state)
    assert not torch.equal(c.decompress(first), c.decompress(second))


def test_shared_seeds_stay_shared_and_random_k_sums_homomorphically() -> None:
    c = random_k(0.1, seed=4)
    xs = [torch.randn(D, generator=torch.Generator().manual_seed(w)) for w in range(3)]
    payloads = [c.compress(x, init_for_worker(c, x, w))[0] for w, x in enumerate(xs)]
    summed = c.sum_payloads(payloads)  # raises unless seeds and steps agree
    manual = payloads[0]["values"] + payloads[1]["values"] + payloads[2]["values"]
    assert torch.equal(summed["values"], manual)
    assert torch.equal(
        c.decompress(summed),
        c.decompress(payloads[0]) + c.decompress(payloads[1]) + c.decompress(payloads[2]),
    )
    for shared in (error_feedback(random_k(0.1)), layerwise(random_k(0.1), SHAPES)):
        assert torch.equal(_first_message(shared, 0), _first_message(shared, 1)), shared.name
    p = powersgd(SHAPES, rank=2)
    assert torch.equal(init_for_worker(p, _x(), 0)["q0"], init_for_worker(p, _x(), 9)["q0"])


def test_transmit_gives_each_client_its_own_rounding() -> None:
    same = _x().expand(2, D).clone()  # two clients, one vector
    for c, differ in ((qsgd(2), True), (random_k(0.2), False)):
        states: dict = {}
        got, _ = transmit(c, {"delta": same}, [10, 11], states, D)
        assert torch.equal(got["delta"][0], got["delta"][1]) is not differ, c.name
        assert set(states) == {10, 11}


def test_transmit_each_counts_each_clients_bytes() -> None:
    rows = torch.stack([_x(), torch.zeros(D)])
    got, sent = transmit_each(threshold(0.5), {"delta": rows}, [0, 1], {}, D)
    assert sent[0] > sent[1] > 0 and got["delta"].shape == (2, D)


@pytest.mark.parametrize(
    ("make", "who"),
    [
        (lambda s: qsgd(2, seed=s), "qsgd"),
        (lambda s: terngrad(seed=s), "terngrad"),
        (lambda s: natural_compression(seed=s), "natural_compression"),
        (lambda s: random_k(0.5, seed=s), "random_k"),
        (lambda s: powersgd(SHAPES, seed=s), "powersgd"),
        (lambda s: count_sketch(8, seed=s), "count_sketch"),
        (lambda s: dgc_top_k(0.1, seed=s), "dgc_top_k"),
    ],
)
def test_seeds_are_checked_when_built(make, who) -> None:
    # random_k(0.5, seed=2**70).init(x) failed with "Overflow when unpacking long long", and a
    # negative or float seed was taken.
    for seed in (2**70, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"{who}: seed must be an integer >= 0"):
            make(seed)
    make(2**32 - 1).init(_x())


@pytest.mark.parametrize(
    "c",
    [qsgd(4), terngrad(), natural_compression(), random_k(0.1), dgc_top_k(0.05)]
    + [powersgd(SHAPES, 2, warm_start=False)],
    ids=lambda c: c.name,
)
def test_a_state_saved_with_tensor_counters_goes_on_as_the_int_one(c: Compressor) -> None:
    # States were {"seed": tensor, "step": tensor} (slow to checkpoint for many clients);
    # a checkpoint written then must resume to the same messages.
    x = _x()
    fresh = c.init(x, seed=7)
    old = {k: torch.tensor(v) if isinstance(v, int) else v for k, v in fresh.items()}
    assert isinstance(fresh["step"], int) and isinstance(old["step"], torch.Tensor)
    for _ in range(3):
        (new_msg, fresh), (old_msg, old) = c.compress(x, fresh), c.compress(x, old)
        assert torch.equal(c.decompress(new_msg), c.decompress(old_msg))
    assert int(old["step"]) == int(fresh["step"]) == 3


@pytest.mark.parametrize("c", [qsgd(4), random_k(0.1), dgc_top_k(0.05)], ids=lambda c: c.name)
def test_init_still_checks_its_input(c: Compressor) -> None:
    with pytest.raises(ValueError, match="flat vector"):
        c.init(torch.zeros(3, 3))
