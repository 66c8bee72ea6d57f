"""``train_parallel`` checks a resume against its checkpoint, and its inputs as ``train`` does.

A resume with other settings went on silently from the checkpoint (fewer steps returned the
longer run), or failed deep inside: another algorithm's state (``KeyError: 'weight_W1'``),
momentum added (a bare ``AssertionError``), a model of another size (a reshape error). A model
that mixes the samples of a batch trained silently, since the checks saw only 2 samples.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from shoal.algorithms.dgc import dgc
from shoal.attacks import Byzantine, sign_flip
from shoal.data.types import ArrayDataset, FederatedDataset
from shoal.parallel import (
    ParallelConfig,
    SimComm,
    clipped_gossip,
    dpsgd,
    robust_gossip,
    sgp,
    sync_sgd,
    train_parallel,
)
from shoal.parallel.algorithms.dgc import dgc as parallel_dgc
from shoal.parallel.algorithms.sgp import SGP
from shoal.topology import complete, exponential, ring

from .cases import DIM, config, shards, tiny_data, tiny_model


def _run(tmp_path, algorithm, steps, resume, model=None, **cfg):
    return train_parallel(
        model if model is not None else tiny_model(), tiny_data(), shards(3), algorithm,
        config(steps=steps, checkpoint_every=2, **cfg), SimComm(3), out_dir=tmp_path,
        resume=resume,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("algorithm", "match"),
    [
        (lambda: sgp(0.2), "holds the state of another algorithm"),
        (lambda: sync_sgd(0.2, momentum=0.9), "holds the state of another algorithm"),
    ],
)
def test_a_resume_with_another_algorithms_state_is_refused(tmp_path, algorithm, match):
    _run(tmp_path, sync_sgd(0.2), 4, False)
    with pytest.raises(ValueError, match=match):
        _run(tmp_path, algorithm(), 6, True)


def test_a_resume_with_another_model_or_fewer_steps_is_refused(tmp_path):
    _run(tmp_path, sync_sgd(0.2), 4, False)
    torch.manual_seed(0)
    wider = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="holds a model of 83 parameters, this one has 163"):
        _run(tmp_path, sync_sgd(0.2), 6, True, model=wider)
    with pytest.raises(ValueError, match="at step 4, past steps=2; a resumed run can only"):
        _run(tmp_path, sync_sgd(0.2), 2, True)


def test_a_resume_with_other_settings_warns_and_the_same_ones_do_not(tmp_path):
    _run(tmp_path, sync_sgd(0.2), 4, False)
    with pytest.warns(UserWarning, match=r"unlike its checkpoint's \(algorithm, seed differ\)"):
        _run(tmp_path, dpsgd(0.2, ring(3)), 6, True, seed=9)  # same state keys as sync_sgd

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(tmp_path, dpsgd(0.2, ring(3)), 8, True, seed=9)  # as the last checkpoint was made


def test_a_resume_under_another_graph_or_byzantine_set_takes_the_new_one(tmp_path):
    """SGP's graph and robust gossip's honest nodes live in the algorithm's state: the
    checkpoint's were kept (a ring went on as a ring, the old Byzantine node was scored), while
    the warning said the run went on under the new setting."""

    def run(algorithm, steps, out, resume):
        n = 4 if isinstance(algorithm, SGP) else 6
        cfg = config(steps=steps, checkpoint_every=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the setup-differs warning, meant here
            return train_parallel(
                tiny_model(), tiny_data(), shards(n), algorithm, cfg, SimComm(n),
                out_dir=tmp_path / out, resume=resume,
            )  # fmt: skip

    run(sgp(0.2, ring(4)), 4, "sgp", False)
    resumed = run(sgp(0.2, complete(4)), 6, "sgp", True)
    z_WD = resumed.params_WD  # one step on the complete graph: every node holds the average
    torch.testing.assert_close(z_WD, z_WD.mean(0).expand_as(z_WD), rtol=0, atol=1e-6)

    def gossip(byzantine):
        attack = Byzantine(frozenset({byzantine}), sign_flip())
        return robust_gossip(0.2, exponential(6), clipped_gossip(b=1), byzantine=attack)

    run(gossip(1), 4, "rg", False)
    resumed = run(gossip(3), 6, "rg", True)
    honest = torch.tensor([w != 3 for w in range(6)])
    torch.testing.assert_close(resumed.params, resumed.params_WD[honest].mean(0))


def test_a_run_stopped_at_its_target_trains_on_when_resumed_without_it(tmp_path):
    stopped = _run(tmp_path, sync_sgd(0.5), 40, False, target_accuracy=0.3)
    reached = stopped.summary["steps_to_target"]
    assert reached is not None and stopped.metrics[-1]["step"] < 40
    again = _run(tmp_path, sync_sgd(0.5), 40, True, target_accuracy=0.3)
    assert again.metrics == stopped.metrics  # finished: nothing more
    further = _run(tmp_path, sync_sgd(0.5), 40, True)  # it returned at once before
    assert further.metrics[-1]["step"] == 40


class _Centred(nn.Module):
    """Subtracts the batch mean: a sample's output depends on the rest of its batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(DIM, 3)

    def forward(self, x):
        h = self.a(x)
        return h - 0.5 * h.mean(0)


def test_the_model_checks_see_all_the_samples():
    data, cfg = tiny_data(), config(steps=1)
    with pytest.raises(ValueError, match="depends on the other samples of its batch"):
        train_parallel(_Centred(), data, shards(2), sync_sgd(0.1), cfg, SimComm(2))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (200, 4), generator=g)
    x[50:, 0] = 9  # beyond the first two samples, which were all the checks saw
    y = x[:, 1] % 3
    tokens = FederatedDataset(
        "tokens", ArrayDataset(x[:160], y[:160], 3), ArrayDataset(x[160:], y[160:], 3)
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="training sample 50 has token id 9"):
        train_parallel(model, tokens, shards(2), sync_sgd(0.1), cfg, SimComm(2))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: sync_sgd(0.2, 0.9, nesterov="False"), "nesterov must be true or false"),
        (lambda: sgp(0.1, overlap="no"), "overlap must be true or false"),
        (lambda: sync_sgd(True), "lr must be a positive number, got True"),
        (lambda: sync_sgd(0.1, weight_decay=float("inf")), "weight_decay must be a finite"),
        (lambda: ParallelConfig(5, target_accuracy="0.5"), r"target_accuracy must be in \(0, 1\]"),
        (lambda: ParallelConfig(5, progress="no"), "progress must be true or false"),
        (lambda: ParallelConfig(5, slowdown=[1, 2]), "slowdown must be a dict"),
        (lambda: dgc(0.1, [(3, 3)], seed=1.5), "dgc: seed must be an integer"),
        (lambda: dgc(0.1, [(3, 3)], clip_norm=True, num_workers=2), "clip_norm must be a positive"),
        # the data-parallel form took True as 1, and a string failed with a bare TypeError
        (
            lambda: parallel_dgc(0.1, [(3, 3)], warmup_epochs=0, clip_norm=True),
            "clip_norm must be a positive",
        ),
        (
            lambda: parallel_dgc(0.1, [(3, 3)], warmup_epochs=0, clip_norm="0.5"),
            "clip_norm must be a positive",
        ),
    ],
)
def test_bad_arguments_are_refused_in_one_line(build, match):
    # A string flag is true to Python (nesterov="False" trained with Nesterov), True a number
    # (lr = 1), a float seed was truncated; the rest failed later, or deep inside.
    with pytest.raises((ValueError, TypeError), match=match):
        build()


@pytest.mark.parametrize(
    ("model", "data", "match"),
    [
        (tiny_model, lambda: torch.utils.data.TensorDataset(torch.zeros(3)), "data must be a"),
        (lambda: nn.Linear, tiny_data, "model must be a Module"),  # the class, not a model
    ],
)
def test_train_parallel_refuses_what_is_not_a_model_or_data(model, data, match):
    # AttributeErrors from inside: "'TensorDataset' object has no attribute 'train'".
    with pytest.raises(TypeError, match=match):
        train_parallel(model(), data(), shards(3), sync_sgd(0.1), config(steps=1), SimComm(3))


def test_a_numpy_learning_rate_is_a_number():
    # np.float32(0.1) was refused as "not a positive number".
    assert sync_sgd(np.float32(0.1)).lr == np.float32(0.1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"config": {"steps": 5}}, "config must be a ParallelConfig"),
        ({"init": [0.0] * 83}, "init must be a Tensor"),
        ({"init": torch.full((83,), float("nan"))}, "init has NaN or inf entries"),
        ({"callback": 3}, "callback must be callable"),
    ],
)
def test_train_parallels_arguments_are_checked_before_any_work(kw, match):
    args = {"config": config(steps=2), **kw}
    cfg = args.pop("config")
    with pytest.raises((ValueError, TypeError), match=match):
        train_parallel(tiny_model(), tiny_data(), shards(2), sync_sgd(0.1), cfg, SimComm(2), **args)


class _LazyMomentum:
    """A user's algorithm that makes its momentum at the first step (init keeps no state)."""

    name = "lazy"

    def init(self, params_WD, comm):
        return {}

    def step(self, params_WD, grad_fn, state, comm, step):
        m = 0.9 * state.get("m", torch.zeros_like(params_WD)) + grad_fn(params_WD)
        return comm.all_reduce_mean(params_WD - 0.1 * m), {"m": m}

    @staticmethod
    def model(params_WD, state):
        return params_WD[0]


def test_an_algorithm_whose_state_grows_after_init_resumes(tmp_path):
    # Its checkpoint holds "m", which init does not make: the resume was refused as another
    # algorithm's state. Only keys init makes must be there.
    straight = _run(tmp_path / "a", _LazyMomentum(), 6, False)
    _run(tmp_path / "b", _LazyMomentum(), 4, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a setup warning (its repr shows an address)
        resumed = _run(tmp_path / "b", _LazyMomentum(), 6, True)
    torch.testing.assert_close(resumed.params, straight.params, rtol=0, atol=0)


def test_train_parallel_detaches_init_and_makes_no_folder_for_a_failed_resume(tmp_path):
    model = tiny_model()
    init = torch.nn.utils.parameters_to_vector(model.parameters())  # requires grad
    result = train_parallel(
        model, tiny_data(), shards(3), sync_sgd(0.1), config(steps=2), SimComm(3), init=init
    )
    assert result.params.grad_fn is None and not result.params.requires_grad
    with pytest.raises(ValueError, match="cannot resume: no run folder"):
        _run(tmp_path / "typo", sync_sgd(0.2), 4, True)
    assert not (tmp_path / "typo").exists()


def test_a_resume_with_a_reshuffled_split_of_equal_sizes_warns(tmp_path):
    _run(tmp_path, sync_sgd(0.2), 4, False)
    pool = np.random.default_rng(5).permutation(np.concatenate(shards(3)))
    other = np.split(pool, np.cumsum([len(s) for s in shards(3)])[:-1])
    with pytest.warns(UserWarning, match=r"\(shard split differ\)"):
        train_parallel(
            tiny_model(), tiny_data(), other, sync_sgd(0.2),
            config(steps=6, checkpoint_every=2), SimComm(3), out_dir=tmp_path, resume=True,
        )  # fmt: skip
