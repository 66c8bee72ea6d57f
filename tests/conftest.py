"""Hypothesis draws fresh examples on every local run (to keep finding new cases), but under
CI (``CI=true``, as ``.ci/run`` is invoked) it replays a fixed sequence, so a submission's check
does not hinge on a rare draw; a failure found locally is fixed in the code, not skipped."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")
