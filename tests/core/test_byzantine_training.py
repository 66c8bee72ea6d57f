"""Byzantine clients inside training: the inbox swaps their messages (sent through the run's
compressor), label flipping poisons."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from shoal.aggregate import median
from shoal.algorithms import fedavg
from shoal.algorithms.base import LocalWork
from shoal.attacks import Byzantine, byzantine, label_flip, mimic, sign_flip
from shoal.compress import threshold
from shoal.data.types import ArrayDataset
from shoal.runtime.inbox import Inbox
from shoal.runtime.sim import SimRuntime
from shoal.schedule import ClientSampler
from shoal.train import TrainConfig, train

from .helpers import tiny_data, tiny_model, unequal_clients


class _Recorder:
    linear = False

    def __call__(self, inbox_ND, weights_N):
        self.seen = inbox_ND.clone()
        return inbox_ND.mean(0)


def test_inbox_replaces_exactly_the_byzantine_rows_across_chunks():
    rows = torch.arange(12.0).reshape(6, 2)
    bad = np.array([False, True, False, False, True, False])  # task order
    seen_honest = []

    def attack(honest, f):
        seen_honest.append(honest.clone())
        return torch.full((f, 2), -1.0)

    rec = _Recorder()
    inbox = Inbox(rec, num_params=2, attack=attack, byzantine=bad)
    order = np.array([4, 0, 2, 1, 5, 3])  # the runtime's sorted order, in two chunks
    for chunk in (order[:3], order[3:]):
        inbox.add({"delta": rows[chunk]}, torch.ones(3), chunk)
    inbox.result()
    for i, pos in enumerate(order):
        expected = torch.full((2,), -1.0) if bad[pos] else rows[pos]
        assert torch.equal(rec.seen[i], expected)
    assert sorted(seen_honest[0][:, 0].tolist()) == sorted(rows[~bad][:, 0].tolist())


@pytest.mark.parametrize("shared_seed", [False, True], ids=["qsgd", "random_k"])
def test_a_byzantine_row_is_rounded_anew_every_round(shared_seed):
    # The crafted row went through a compressor state made from the client's first-message
    # seed in every round: QSGD rounded it, random-k (a shared seed) masked it, alike each round.
    from shoal.compress import qsgd, random_k

    row = torch.linspace(-1.0, 1.0, 64)
    bad = np.array([True, False])

    def received(round_idx):
        rec = _Recorder()
        inbox = Inbox(
            rec, 64, attack=lambda honest, f: row[None].repeat(f, 1), byzantine=bad,
            compressor=random_k(0.25) if shared_seed else qsgd(2), clients=np.array([3, 7]),
            round_idx=round_idx,
        )  # fmt: skip
        inbox.add({"delta": torch.zeros(2, 64)}, torch.ones(2), np.arange(2))
        inbox.result()
        return rec.seen[0]

    assert torch.equal(received(4), received(4))  # every process decodes the same row
    assert not torch.equal(received(4), received(5))


def _run(aggregator, behaviour, num_byz=3, vectorize=True):
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    cfg = TrainConfig(
        rounds=12,
        sampler=ClientSampler(10),
        work=LocalWork(epochs=2, batch_size=8),
        progress=False,
    )
    byz = byzantine(num_byz, 10, behaviour, seed=0) if behaviour is not None else None
    return train(
        tiny_model(),
        data,
        clients,
        fedavg(0.2),
        cfg,
        aggregator=aggregator,
        byzantine=byz,
        runtime=SimRuntime(vectorize=vectorize),
    )


def test_mean_collapses_under_sign_flip_and_median_holds():
    clean = _run(None, None).metrics[-1]["test_accuracy"]
    attacked_mean = _run(None, sign_flip(scale=10.0)).metrics[-1]["test_accuracy"]
    attacked_median = _run(median(), sign_flip(scale=10.0)).metrics[-1]["test_accuracy"]
    assert clean > 0.8
    assert attacked_mean < 0.6
    # The unweighted median of non-IID clients costs some accuracy, but it does not collapse.
    assert attacked_median > 0.7 and attacked_median > attacked_mean + 0.15


def test_attacked_runtimes_agree():
    a = _run(median(), sign_flip(scale=10.0), vectorize=True).params
    b = _run(median(), sign_flip(scale=10.0), vectorize=False).params
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_label_flipping_majority_poisons_the_model():
    clean = _run(None, None).metrics[-1]["test_accuracy"]
    poisoned = _run(None, label_flip(3), num_byz=9).metrics[-1]["test_accuracy"]
    assert poisoned < clean - 0.3


def test_byzantine_clients_sharing_samples_flip_each_once():
    """Flipped per client, a sample two Byzantine clients held was flipped back (9 - (9 - y)):
    the attack vanished. The reference: the same clients holding separate flipped copies."""
    data = tiny_data()
    halves = unequal_clients(len(data.train), 4)
    shared = [*halves, halves[0]]  # client 4 holds client 0's samples
    cfg = TrainConfig(rounds=1, sampler=ClientSampler(5), work=LocalWork(1, 8), progress=False)

    def run(dataset, clients, byz):
        return train(tiny_model(), dataset, clients, fedavg(0.2), cfg, byzantine=byz).params

    flip = label_flip(3)
    got = run(data, shared, Byzantine(frozenset({0, 4}), flip))
    # Client 4 with its own copy of the samples, appended to the training split.
    own = torch.as_tensor(halves[0])
    x = torch.cat([data.train.x, data.train.x[own]])
    y = torch.cat([data.train.y, data.train.y[own]])
    copied = replace(data, train=ArrayDataset(x, y, data.train.num_classes))
    copy = np.arange(len(data.train), len(x))
    want = run(copied, [*halves, copy], Byzantine(frozenset({0, 4}), flip))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not torch.equal(got, run(data, shared, None))
    with pytest.raises(ValueError, match="honest client 4 holds samples that Byzantine"):
        run(data, shared, Byzantine(frozenset({0}), flip))


def _one_round(compressor, behaviour):
    data = tiny_data()
    rec = _Recorder()
    cfg = TrainConfig(rounds=1, sampler=ClientSampler(10), work=LocalWork(1, 8), device="cpu",
                      progress=False, client_eval=False)  # fmt: skip
    byz = None if behaviour is None else byzantine(3, 10, behaviour, seed=0)
    res = train(tiny_model(), data, unequal_clients(len(data.train), 10), fedavg(0.2), cfg,
                aggregator=rec, byzantine=byz, compressor=compressor)  # fmt: skip
    return res.metrics[0]["uplink_bytes"], rec.seen


def test_byzantine_clients_send_their_crafted_rows_through_the_compressor():
    """The attack sees the honest rows as the server decoded them; the Byzantine clients then
    send what it crafted through the run's compressor, and are charged that payload's bytes.
    (Their dense rows had bypassed the wire format, for the bytes of their honest uploads.)"""
    c = threshold(0.05)
    clean_bytes, clean = _one_round(c, None)
    got_bytes, got = _one_round(c, sign_flip())
    bad = (got != clean).any(1)
    assert int(bad.sum()) == 3
    torch.testing.assert_close(got[~bad], clean[~bad], rtol=0, atol=0)
    payload, _ = c.compress(-clean[~bad].mean(0), None)
    for row in got[bad]:
        torch.testing.assert_close(row, c.decompress(payload), rtol=0, atol=0)
    honest = sum(c.nbytes(c.compress(row, None)[0]) for row in clean[bad])
    assert c.nbytes(payload) != c.nbytes(c.compress(clean[bad][0], None)[0])
    assert got_bytes == clean_bytes - honest + 3 * c.nbytes(payload)


def test_train_loss_is_the_honest_clients_loss():
    # Round 1: every client trains from the same model, so the honest clients' losses do not
    # depend on what the Byzantine ones do. Label flippers' losses on their flipped labels were
    # averaged in, so the same honest training showed another train_loss.
    flipped = _run(median(), label_flip(3)).metrics[0]["train_loss"]
    attacked = _run(median(), sign_flip()).metrics[0]["train_loss"]
    assert flipped == attacked
    assert flipped != _run(median(), None).metrics[0]["train_loss"]  # 7 clients, not 10


def test_byzantine_ids_must_be_client_ids():
    # train() took 1.5 and -1 (matching no client: the run went on without that attacker).
    for odd in (1.5, -1, "2"):
        with pytest.raises(ValueError, match="Byzantine client ids must be integers >= 0"):
            Byzantine(frozenset({0, odd}), sign_flip())
    assert Byzantine(frozenset({np.int64(3)}), sign_flip()).mask(np.arange(5)).sum() == 1


@pytest.mark.parametrize(
    ("per_round", "replace", "fewest"), [(4, False, 2), (10, False, 8), (4, True, 1)]
)
def test_a_mimic_target_past_a_rounds_honest_updates_is_refused_up_front(
    per_round, replace, fewest
):
    """mimic(target) failed in the first round that sampled a Byzantine client, after the
    earlier rounds had trained, naming no round. 2 of 10 clients are Byzantine: a round of
    `per_round` holds `fewest` honest updates at least (with replacement, one)."""
    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    cfg = TrainConfig(rounds=2, sampler=ClientSampler(per_round, replace), progress=False)

    def run(target):
        byz = byzantine(2, 10, mimic(target), seed=0)
        return train(tiny_model(), data, clients, fedavg(0.2), cfg, byzantine=byz)

    with pytest.raises(ValueError, match=f"can hold {fewest} honest update.s. when it samples"):
        run(fewest)
    with pytest.raises(ValueError, match="use a target below"):
        run(-fewest - 1)
    assert len(run(fewest - 1).metrics) == 2 and len(run(-fewest).metrics) == 2
    assert len(run(None).metrics) == 2


def test_a_stateful_rule_passed_bare_is_warned_about():
    """centered_clip() passed as is clipped around 0 every round (plain norm clipping), not
    around the last round's output, silently; stateful(...) keeps the center."""
    import warnings

    from shoal.aggregate import bucketing, centered_clip, stateful

    data = tiny_data()
    clients = unequal_clients(len(data.train), 10)
    cfg = TrainConfig(rounds=1, sampler=ClientSampler(10), progress=False)

    def run(agg):
        return train(tiny_model(), data, clients, fedavg(0.2), cfg, aggregator=agg)

    for bare in (centered_clip(1.0), bucketing(centered_clip(1.0))):
        with pytest.warns(UserWarning, match=r"keeps no state .* pass stateful\(CenteredClip"):
            run(bare)
    for kept in (stateful(centered_clip(1.0)), bucketing(stateful(centered_clip(1.0))), median()):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run(kept)
