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


@pytest.fixture(autouse=True)
def _same_global_random_state() -> Iterator[None]:
    torch.manual_seed(0)
    np.random.seed(0)
    yield
