"""Hypothesis draws fresh examples on every local run (to keep finding new cases), but under
CI (``CI=true``, as ``.ci/run`` is invoked) it replays a fixed sequence, so a submission's check
does not hinge on a rare draw; a failure found locally is fixed in the code, not skipped.

Every test starts from the same global torch and NumPy random state, so a test that draws from
them sees the same numbers whichever tests ran before it (a geometric-median tolerance once
failed on a draw that depended on the test order)."""

import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


# Folders of tests made of small ops: on a shared two-core machine those run far faster on one
# thread (the algorithm tests about 10x).
ONE_THREAD_FOLDERS = {"algorithms", "compress", "parallel", "robustness"}


@pytest.fixture(autouse=True)
def _single_thread_for_small_ops(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.path.parent.name not in ONE_THREAD_FOLDERS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _same_global_random_state() -> Iterator[None]:
    torch.manual_seed(0)
    np.random.seed(0)
    yield
