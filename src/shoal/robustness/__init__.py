"""The Byzantine-robustness grid: final accuracy of every attack x aggregator on one workload.

``shoal robustness`` and ``benchmarks/robustness.py`` both run it from here::

    from shoal.robustness import STYLES, load_workload, presets, render, run_grid

    work = load_workload("mnist", "path/to/mnist5k")
    style = STYLES["data_parallel"]
    report = run_grid(work, style, style.rounds, presets.attacks(),
                      presets.aggregators(style.tau), command="...")
    render.write(report, json_path="grid.json", md_path="grid.md", png_path="grid.png")

:mod:`.grid` describes the workload and the two styles (FedAvg, data-parallel with worker
momentum), :mod:`.presets` the attacks and aggregators, :mod:`.render` the table and heat map,
:mod:`.momentum` the worker-momentum algorithm of the data-parallel style.
"""

from shoal.robustness import presets, render
from shoal.robustness.grid import LAST, STYLES, Style, Workload, load_workload, run_grid
from shoal.robustness.momentum import WorkerMomentum, worker_momentum

__all__ = [
    "LAST",
    "STYLES",
    "Style",
    "WorkerMomentum",
    "Workload",
    "load_workload",
    "presets",
    "render",
    "run_grid",
    "worker_momentum",
]
