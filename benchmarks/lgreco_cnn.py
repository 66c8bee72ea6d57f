"""L-GreCo's per-layer choice against the uniform setting on the mnist5k CNN's real gradients.

McMahan's CNN without padding (``cnn(padding="valid")``, 582,026 parameters, init seed
``--seed``) trains ``--steps`` steps of SGD (lr 0.05, momentum 0.9, batch 64) on the 4,000
mnist5k training images; the gradient profiled is the mean of the last ``--acc-steps`` minibatch
gradients (the reference's ``acc_iter = 10``). For each family, L-GreCo's knapsack DP picks a
level per weight tensor (the biases travel dense either way) with total error at most the
uniform setting's (``alpha = 1``):

- top-k: densities 0.001 .. 0.1, uniform 0.01;
- QSGD: levels 1, 7, 127, 32767 (2, 4, 8, 16 bits per entry), uniform 7 (4 bits), buckets 512;
- PowerSGD: ranks 2 .. 8, uniform 4 (the reference's [r/2, 2r]), error = the SVD tail.

Reported per family: the bytes of the weight tensors' payloads (exact, serialized) under L-GreCo
and uniform, their ratio (< 1: L-GreCo sends less), the summed per-layer error against the
budget, and the levels chosen. The headline is PowerSGD, the family of the official code
(``LGrCo/L-GreCo``); the other two families' byte ratios are in it with their names.

    python benchmarks/lgreco_cnn.py --json benchmarks/results/lgreco_cnn.json    # as committed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import _args

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "mnist5k"


def shown(path: Path | str) -> str:
    """A path relative to the repository root (no machine paths in the output)."""
    return os.path.relpath(Path(path).resolve(), REPO)


def gradient(a: argparse.Namespace) -> tuple[tuple[torch.Size, ...], list[str], torch.Tensor]:
    """Train a little, then the mean of the last ``acc_steps`` minibatch gradients, flat."""
    from shoal.data import load_mnist_family
    from shoal.functional import ParamSpec, init_params
    from shoal.models import cnn

    data = load_mnist_family(a.data_dir, name="mnist")
    model, _ = init_params(lambda: cnn(padding="valid"), a.seed)
    spec = ParamSpec.of(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data.train.x, data.train.y
    g = torch.Generator().manual_seed(a.seed)
    acc = torch.zeros(spec.num_params)
    for step in range(a.steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        if step >= a.steps - a.acc_steps:
            acc += torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        opt.step()
    return spec.shapes, list(spec.names), acc / a.acc_steps


def main() -> None:
    from shoal.compress.lgreco import lgreco_powersgd, lgreco_qsgd, lgreco_top_k

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=100, help="SGD steps before profiling")
    ap.add_argument("--acc-steps", type=int, default=10, help="gradients averaged for the profile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=_args.positive_int, default=1)
    ap.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help=f"mnist5k (IDX files; default: {shown(DEFAULT_DATA_DIR)} from the repository root)",
    )
    ap.add_argument("--json", type=_args.json_path, help="write all figures here")
    a = ap.parse_args()
    _args.check_mnist5k(ap, a.data_dir)
    if not 1 <= a.acc_steps <= a.steps:
        raise SystemExit("--acc-steps must be in [1, --steps]")
    torch.set_num_threads(a.threads)
    statement = (
        f"mnist5k ({shown(a.data_dir)}), cnn(padding='valid') (582,026 parameters, init seed "
        f"{a.seed}) after {a.steps} SGD steps (lr 0.05, momentum 0.9, batch 64); profile = mean "
        f"of the last {a.acc_steps} minibatch gradients. L-GreCo knapsack DP (alpha = 1, 10,000 "
        "buckets) per weight tensor; bytes are the weight tensors' serialized payloads (biases "
        f"dense in both). {a.threads} torch thread(s), torch {torch.__version__}."
    )
    print(statement + "\n")  # what is compared, on what (also the JSON's statement)
    started = time.perf_counter()
    shapes, names, grad = gradient(a)
    weights = [n for n, s in zip(names, shapes) if len(s) > 1]
    results: dict[str, Any] = {}
    for factory in (lgreco_top_k, lgreco_qsgd, lgreco_powersgd):
        lg = factory(shapes)
        t0 = time.perf_counter()
        alloc = lg.allocate(grad)
        u = lg.levels.index(lg.uniform)
        results[lg.family] = {
            "compressor": lg.name,
            "candidate_levels": list(lg.levels),
            "uniform_level": lg.uniform,
            "lgreco_bytes": alloc.nbytes,
            "uniform_bytes": alloc.uniform_nbytes,
            "bytes_vs_uniform": alloc.nbytes / alloc.uniform_nbytes,
            "lgreco_error": alloc.error,
            "budget": alloc.budget,
            "error_vs_budget": alloc.error / alloc.budget,
            "layers": [
                {
                    "name": name,
                    "level": alloc.levels[j],
                    "bytes": alloc.layer_nbytes[j][alloc.choice[j]],
                    "error": alloc.layer_errors[j][alloc.choice[j]],
                    "uniform_bytes": alloc.layer_nbytes[j][u],
                    "uniform_error": alloc.layer_errors[j][u],
                }
                for j, name in enumerate(weights)
            ],
            "seconds": time.perf_counter() - t0,
        }
        r = results[lg.family]
        chosen = ", ".join(f"{layer['name']}={layer['level']}" for layer in r["layers"])
        print(
            f"{lg.family:<9} bytes {r['lgreco_bytes']:>9,} vs uniform {r['uniform_bytes']:>9,} "
            f"({r['bytes_vs_uniform']:.3f}x)  error {r['lgreco_error']:.4f} <= budget "
            f"{r['budget']:.4f}  [{chosen}]"
        )
    headline = {
        "lgreco_bytes_vs_uniform": results["powersgd"]["bytes_vs_uniform"],
        "lgreco_error_vs_budget": results["powersgd"]["error_vs_budget"],
        **{f"lgreco_bytes_vs_uniform_{k}": r["bytes_vs_uniform"] for k, r in results.items()},
    }
    report = {
        "statement": statement,
        "settings": {
            "steps": a.steps,
            "acc_steps": a.acc_steps,
            "seed": a.seed,
            "threads": a.threads,
            "data_dir": shown(a.data_dir),
            "total_seconds": time.perf_counter() - started,
        },
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            # The kernels' instruction set: float rounding, hence accuracies, depend on it.
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "results": results,
        "headline": headline,
    }
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    print("headline:", json.dumps(headline))


if __name__ == "__main__":
    main()
