"""Downlink compression: the broadcast compressed against the clients' copy, with exact bytes."""

import warnings

import numpy as np
import pytest
import torch

from shoal.algorithms import fedavg, scaffold
from shoal.algorithms.base import LocalWork
from shoal.compress import (
    error_feedback,
    fp16,
    identity,
    layerwise,
    powersgd,
    qsgd,
    serialize,
    top_k,
)
from shoal.runtime.broadcast import broadcast
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model, unequal_clients

D = 50


def _dense(t: torch.Tensor) -> int:
    return len(serialize({"values": t}))


def test_bytes_are_the_payloads_and_stale_clients_get_the_model_dense():
    c = top_k(k=5)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(D, generator=g), torch.randn(D, generator=g)
    first = np.array([0, 1, 2])
    got, sent, state = broadcast(c, {"params": x1}, first, {}, D)
    assert torch.equal(got["params"], x1)  # nobody holds a copy yet: everyone gets it exactly
    assert sent.tolist() == [_dense(x1)] * 3
    second = np.array([1, 2, 7])  # 1 and 2 hold the previous broadcast; 7 does not
    got, sent, state = broadcast(c, {"params": x2}, second, state, D)
    payload, _ = c.compress(x2 - x1, None)
    assert sent.tolist() == [len(serialize(payload))] * 2 + [_dense(got["params"])]
    assert torch.equal(got["params"], x1 + c.decompress(payload))  # what every client trains from
    assert len(serialize(payload)) < _dense(x1) / 3


def test_the_copy_carries_what_was_not_sent_into_later_rounds():
    """Error feedback through the reference: with a fixed model, the copy converges to it."""
    g = torch.Generator().manual_seed(1)
    x0, x = torch.randn(D, generator=g), torch.randn(D, generator=g)
    everyone = np.arange(4)
    _, _, state = broadcast(top_k(k=5), {"params": x0}, everyone, {}, D)
    for _ in range(D // 5):
        got, sent, state = broadcast(top_k(k=5), {"params": x}, everyone, state, D)
    torch.testing.assert_close(got["params"], x, atol=1e-6, rtol=0)


def test_non_model_tensors_travel_dense_and_state_is_not_modified():
    small = torch.ones(3)
    state: dict = {}
    x = torch.zeros(D)
    got, sent, new = broadcast(fp16(), {"params": x, "tau": small}, np.array([0]), state, D)
    assert state == {} and "ref" in new
    assert got["tau"] is small
    assert sent.tolist() == [_dense(x) + _dense(small)]


@pytest.mark.parametrize("nested", [False, True])
def test_error_feedback_on_the_downlink_is_refused(nested):
    ef = error_feedback(top_k(ratio=0.1))
    downlink = layerwise(ef, [(D,)], skip=lambda shape: False) if nested else ef
    with pytest.raises(ValueError, match="without error_feedback") as info:
        _run(fedavg(0.2), downlink, rounds=1)
    assert "\n" not in str(info.value)


def test_a_downlink_compressor_that_is_not_contractive_is_warned_of():
    # QSGD with 4 levels in buckets of 512 is not contractive (4^2 < 512): the clients' copy,
    # updated by feedback through the last one sent, then drifts away from the model.
    with pytest.warns(UserWarning, match="downlink compressor qsgd.*not contractive"):
        _run(fedavg(0.2), qsgd(levels=4), rounds=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(fedavg(0.2), qsgd(levels=32), rounds=1)  # 32^2 >= 512: contractive


def _run(alg, downlink, rounds=10, per_round=10, **kw):
    torch.set_num_threads(1)
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    cfg = TrainConfig(
        rounds=rounds,
        sampler=ClientSampler(per_round),
        work=LocalWork(epochs=2, batch_size=8),
        progress=False,
    )
    return train(tiny_model(), data, clients, alg, cfg, downlink_compressor=downlink, **kw)


def test_identity_downlink_is_exactly_no_downlink_compression():
    plain = _run(fedavg(0.2), None, rounds=3, per_round=4)
    same = _run(fedavg(0.2), identity(), rounds=3, per_round=4)
    assert torch.equal(plain.params, same.params)
    for a, b in zip(plain.metrics, same.metrics, strict=True):
        a, b = dict(a), dict(b)
        a.pop("wall_seconds"), b.pop("wall_seconds")
        assert a == b


def test_top_k_downlink_learns_with_fewer_bytes():
    dense = _run(fedavg(0.2), None)
    packed = _run(fedavg(0.2), top_k(ratio=0.2))
    # Every client takes part every round: from round 2 on, all receive the sparse payload.
    first, later = packed.metrics[0], packed.metrics[1]
    assert first["downlink_bytes"] == dense.metrics[0]["downlink_bytes"]
    assert later["downlink_bytes"] < dense.metrics[1]["downlink_bytes"] / 2
    assert packed.metrics[-1]["test_accuracy"] > 0.75
    assert not torch.equal(packed.params, dense.params)


def test_partial_participation_and_scaffold_compress_each_model_sized_tensor():
    dense = _run(scaffold(0.2), None, rounds=4, per_round=5)
    with pytest.warns(UserWarning, match="not contractive"):  # 4 rounds: it stays finite
        packed = _run(scaffold(0.2), qsgd(4), rounds=4, per_round=5)
    for d, p in zip(dense.metrics[1:], packed.metrics[1:]):
        # stale clients pay the dense model, up-to-date ones a 4-bit payload (x2 for SCAFFOLD)
        assert p["downlink_bytes"] <= d["downlink_bytes"]
    assert packed.metrics[-1]["cum_downlink_bytes"] < dense.metrics[-1]["cum_downlink_bytes"]
    assert np.isfinite(packed.metrics[-1]["test_loss"])


def test_each_model_sized_key_gets_its_own_draws():
    """SCAFFOLD's params and c were rounded with the same uniform draws every round; the
    first key keeps the configured seed, so a one-key downlink is as it was."""
    d, c = 1000, qsgd(2, bucket_size=None, seed=0)
    zero, v = torch.zeros(d), torch.linspace(0.1, 1.0, d)
    _, _, state = broadcast(c, {"params": zero, "c": zero}, np.arange(2), {}, d)
    got, _, _ = broadcast(c, {"params": v, "c": v}, np.arange(2), state, d)
    assert not torch.equal(got["params"], got["c"])
    payload, _ = c.compress(v, c.init(v))  # the first key: the configured seed, as before
    assert torch.equal(got["params"], c.decompress(payload))


def test_a_downlink_compressor_for_another_model_is_refused_before_round_1():
    # It passed round 1 (sent dense, maybe checkpointed) and failed in round 2, in broadcast,
    # with "powersgd: x_D has 57 entries but shapes describe 66", naming no downlink.
    data = tiny_data()
    clients = unequal_clients(len(data.train), 6)
    cfg = TrainConfig(rounds=2, sampler=ClientSampler(3), progress=False)
    wrong = powersgd([(6, 11)], rank=1)
    with pytest.raises(ValueError, match=r"downlink compressor powersgd\(rank=1\): .*shapes"):
        train(tiny_model(), data, clients, fedavg(0.1), cfg, downlink_compressor=wrong)
