"""What the command line imports before it has work to do.

matplotlib takes ~0.6 s to import; every ``shoal`` command paid it when ``shoal.report.plots``
imported it at module level, although only ``demo``, ``plot``, ``data show --png`` and
``robustness`` draw. A fresh interpreter is needed: the test process has matplotlib already.
"""

from __future__ import annotations

import subprocess
import sys


def test_cli_modules_do_not_import_matplotlib() -> None:
    code = (
        "import sys\n"
        "import shoal.cli, shoal.cli.run, shoal.cli.data, shoal.cli.plot, shoal.cli.launch\n"
        "import shoal.cli.probe, shoal.cli.robustness, shoal.report\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]"


def test_plots_import_matplotlib_when_they_draw(tmp_path) -> None:
    code = (
        "import sys\n"
        "from shoal.report import plot_runs\n"
        "row = {'round': 1, 'test_accuracy': 0.5, 'test_loss': 1.0}\n"
        f"plot_runs({{'a': [row]}}, {str(tmp_path)!r})\n"
        "print('matplotlib' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "True"
    assert (tmp_path / "test_vs_rounds.png").stat().st_size > 0
