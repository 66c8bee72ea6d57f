"""``shoal data list|fetch|show``: what data is here, getting it, and looking at a partition."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from shoal.cli import UsageError, add_set_option, config_from_args, file_arg, name_choices
from shoal.cli.build import build_clients
from shoal.cli.parallel import is_parallel
from shoal.cli.registry import DATASETS, in_cache
from shoal.data import default_cache_dir, fetch, format_histogram, label_histogram
from shoal.data.download import check_cached
from shoal.report import plot_label_histogram


def add_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="list, fetch or inspect datasets and partitions")
    cmds = p.add_subparsers(dest="data_command", required=True, parser_class=type(p))

    ls = cmds.add_parser("list", help="the datasets and whether each is ready to use")
    ls.add_argument("--cache-dir", metavar="DIR", help="default: $SHOAL_DATA or ~/.cache/shoal")
    ls.set_defaults(func=cmd_list)

    fe = cmds.add_parser("fetch", help="download a dataset into the cache (SHA-256 checked)")
    fe.add_argument("name", metavar="NAME", help="a dataset name (see `shoal data list`)")
    fe.add_argument("--cache-dir", metavar="DIR", help="default: $SHOAL_DATA or ~/.cache/shoal")
    fe.set_defaults(func=cmd_fetch)

    sh = cmds.add_parser(
        "show",
        help="print the per-client label histogram of a config's partition",
        description="Build the partition a config describes; print its per-client label "
        "histogram and sizes, and write a heat map (clients x classes) as PNG.",
    )
    sh.add_argument("config", metavar="CONFIG.toml")
    add_set_option(sh)
    sh.add_argument("--png", metavar="FILE", help="heat map file (default: <config>-labels.png)")
    sh.add_argument("--rows", type=int, default=20, help="client rows to print (default 20)")
    sh.set_defaults(func=cmd_show)
    name_choices(cmds)


def _cache(args: argparse.Namespace) -> Path:
    return Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()


def _status(name: str, cache: Path) -> str:
    source = DATASETS[name].source
    if source == "bundled":
        return "ready (ships with scikit-learn)"
    if source == "generated":
        return "ready (generated from the seed)"
    if in_cache(name, cache):
        # Hashed as every run hashes it (about a second a GB): a corrupted file was listed
        # as ready, and the next run refused it.
        try:
            check_cached(name, cache / name)
        except ValueError:
            return f"in the cache but damaged (a file fails its SHA-256): shoal data fetch {name}"
        return f"in the cache: {cache / name}"
    if source == "prepared":
        return f"needs data.dir: a LEAF-prepared folder (raw inputs: shoal data fetch {name})"
    return f"not in the cache: shoal data fetch {name} (or data.dir)"


def cmd_list(args: argparse.Namespace) -> int:
    cache = _cache(args)
    width = max(len(n) for n in DATASETS)
    print(f"cache folder: {cache}")
    for name, entry in DATASETS.items():
        print(f"{name:<{width}}  {entry.about}")
        print(f"{'':<{width}}    {_status(name, cache)}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    name = args.name
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    source = DATASETS[name].source
    if source in ("bundled", "generated"):
        print(f"{name} needs no download ({_status(name, _cache(args))})")
        return 0
    folder = fetch(name, _cache(args))
    print(f"{name}: {folder}")
    if source == "prepared":
        print(
            f"these are LEAF's raw inputs: run LEAF's data/{name}/preprocess.sh on them and "
            "set data.dir to its output folder"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.rows < 0:
        raise UsageError(f"--rows must be >= 0, got {args.rows}")
    # A folder or an empty name was refused by no one: "" fell back to the default name, and
    # matplotlib wrote a folder's name with ".png" added (the line below named the folder).
    png = file_arg(args.png, "--png") if args.png is not None else None
    if png is not None and png.suffix:  # none: matplotlib adds .png
        from matplotlib.backend_bases import FigureCanvasBase

        kinds = FigureCanvasBase.get_supported_filetypes()
        if png.suffix[1:].lower() not in kinds:
            # matplotlib refused it after the whole partition was built, with exit code 1.
            raise UsageError(f"--png {args.png}: name an image file (.{', .'.join(sorted(kinds))})")
    cfg = config_from_args(args)
    # A data-parallel config's clients are its workers, all of them every step: no sampling.
    workers = is_parallel(cfg)
    cfg, data, clients = build_clients(cfg, check_sampling=not workers)
    k = data.train.num_classes
    hist = label_histogram(data.train.y.numpy(), clients, k)
    sizes = np.array([len(c) for c in clients])
    options = ", ".join(f"{key}={v}" for key, v in cfg.options("partition").items())
    scheme = f"{cfg['partition.scheme']}({options})"
    print(f"{data.name}: {len(data.train)} training samples, {k} classes; {scheme}")
    who = "worker" if workers else "client"
    print(format_histogram(hist, max_rows=args.rows, who=who))
    print(
        f"{who}s: {len(clients)}; samples per {who}: min {sizes.min()}, median "
        f"{np.median(sizes):g}, max {sizes.max()} ({sizes.sum()} of {len(data.train)} used)"
    )
    png = png or Path(f"{Path(args.config).stem}-labels.png")
    title = f"{data.name}, {scheme}: labels per {who}"
    print(f"heat map: {plot_label_histogram(hist, png, title, who=who)}")
    return 0
