"""benchmarks/transport_probe.py on loopback (no namespaces, no root), and cost_model_check.py
reading its links. The probe itself is tested in tests/parallel/test_probe.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.parallel.probe import KINDS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_loopback_run_writes_the_headline_and_cost_model_check_reads_it(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "transport_probe.py"), "--no-netns",
        "--rates", "none", "--sizes", "1024,1048576,4194304", "--repeats", "1", "--json", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=180, cwd=tmp_path)
    res = json.loads(out.read_text())
    assert set(res["headline"]) == {"latency_ms_none", "rate_fraction_none"}
    assert res["headline"]["latency_ms_none"] > 0 and res["headline"]["rate_fraction_none"] is None
    rows = res["rates"]["none"]["rows"]
    assert {(r["kind"], r["nbytes"]) for r in rows} == {
        (k, n) for k in KINDS for n in (1024, 1048576, 4194304)
    }
    # Uncapped links are not a shaped run's: cost_model_check.py refuses them by name.
    import cost_model_check

    with pytest.raises(SystemExit, match="no rate of"):
        cost_model_check.probed_links(out)
    res["rates"]["100mbit"] = res["rates"].pop("none")
    out.write_text(json.dumps(res))
    (link,) = cost_model_check.probed_links(out).values()
    assert link.latency_s == res["rates"]["100mbit"]["fit"]["latency_s"]
