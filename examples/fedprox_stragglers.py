"""FedProx's headline on Synthetic(1,1) with 90% stragglers (Li et al., MLSys 2020, Fig. 1).

The setup of FedProx's ``run_fedprox.sh``: 30 users of Synthetic(1,1), multinomial logistic
regression (610 parameters), 10 clients per round, E=20 local epochs, batch 10, lr 0.01,
200 rounds. Each round 90% of the sampled clients are stragglers:

- FedAvg drops them (``flearn/trainers/fedavg.py``);
- FedProx mu=0 keeps their partial work (1 to E-1 epochs);
- FedProx mu=1 keeps it and adds the proximal term.

All three see the same clients and stragglers each round (draws keyed by seed and round).
Expected from the paper: FedAvg's training loss is higher and unstable, mu=0 helps, mu=1 is
smooth and lowest. Prints the README's table (the mean training loss over the last 50 rounds,
the std of its round-to-round change and the final test accuracy: the final loss alone swings
with FedAvg's instability) and writes ``fedprox_stragglers.png`` and ``.json`` into ``--out``.

    python examples/fedprox_stragglers.py --out runs/fedprox [--rounds 200] [--drop 0.9]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from shoal.algorithms import fedavg, fedprox  # noqa: E402
from shoal.algorithms.base import LocalWork  # noqa: E402
from shoal.data import synthetic  # noqa: E402
from shoal.functional import init_params  # noqa: E402
from shoal.models import mclr  # noqa: E402
from shoal.schedule import ClientSampler, Stragglers  # noqa: E402
from shoal.train import TrainConfig, train  # noqa: E402


def summary(curve: dict[str, list], tail: int) -> dict[str, float]:
    """The README table's row: mean training loss over the last ``tail`` rounds, the std of
    its round-to-round change over all rounds (how unstable it is), the final test accuracy."""
    loss = np.asarray(curve["train_loss"], dtype=float)
    return {
        "tail_loss": float(loss[-tail:].mean()),
        "change_std": float(np.diff(loss).std()) if len(loss) > 1 else 0.0,
        "final_acc": float(curve["test_accuracy"][-1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="runs/fedprox_stragglers")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--drop", type=float, default=0.9, help="fraction of stragglers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = synthetic(1.0, 1.0, seed=args.seed)
    assert data.natural_clients is not None
    runs = {
        "FedAvg (drops stragglers)": (fedavg(0.01), Stragglers(args.drop, drop=True)),
        "FedProx mu=0": (fedprox(0.01, mu=0.0), Stragglers(args.drop)),
        "FedProx mu=1": (fedprox(0.01, mu=1.0), Stragglers(args.drop)),
    }
    curves: dict[str, dict[str, list]] = {}
    for name, (alg, stragglers) in runs.items():
        model, p0 = init_params(lambda: mclr(60, 10), args.seed)
        cfg = TrainConfig(
            rounds=args.rounds,
            sampler=ClientSampler(10),
            work=LocalWork(epochs=20, batch_size=10),
            stragglers=stragglers,
            seed=args.seed,
            eval_train=True,
        )
        res = train(model, data, data.natural_clients, alg, cfg, init=p0)
        curves[name] = {
            "train_loss": [r["global_train_loss"] for r in res.metrics],
            "test_accuracy": [r["test_accuracy"] for r in res.metrics],
        }
        curves[name]["summary"] = summary(curves[name], tail=min(50, args.rounds))
    tail = f"last {min(50, args.rounds)} rounds"  # a shortened run has fewer than 50
    print(f"{'method':28s} loss, {tail:14s} | std of its change | final test acc")
    for name, c in curves.items():
        s = c["summary"]
        print(f"{name:28s} {s['tail_loss']:20.3f} | {s['change_std']:17.3f} | {s['final_acc']:.3f}")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, c in curves.items():
        axes[0].plot(range(1, args.rounds + 1), c["train_loss"], label=name)
        axes[1].plot(range(1, args.rounds + 1), c["test_accuracy"], label=name)
    axes[0].set(
        xlabel="round",
        ylabel="training loss (global model, all data)",
        title=f"Synthetic(1,1), {args.drop:.0%} stragglers",
    )
    axes[1].set(xlabel="round", ylabel="test accuracy", title="pooled test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fedprox_stragglers.png", dpi=120)
    (out / "fedprox_stragglers.json").write_text(json.dumps(curves) + "\n")
    print(f"wrote {out / 'fedprox_stragglers.png'}")


if __name__ == "__main__":
    main()
