"""``spineloss learn genetic|taylor|meta CONFIG.toml [--out DIR] [--workers N] [--no-resume] [--no-progress]
[--backend local|ray] [--address A] [--cpus-per-task N]``.

:func:`add_learn_parser` adds the sub-command to the ``spineloss`` parser (:mod:`spineloss.cli`); nothing
heavy is imported until the command runs.
"""
from __future__ import annotations

import argparse
import time

from . import METHODS

__all__ = ["add_learn_parser"]


def _cmd_learn(args: argparse.Namespace) -> int:
    from .config import load_learn_config
    from .runner import run_learning
    config = load_learn_config(args.config)
    t0 = time.perf_counter()
    from ..backends import backend_from_arguments
    backend = backend_from_arguments(args)   # None: the local process pool
    try:
        result = run_learning(args.method, config, args.out, resume=args.resume, progress=not args.no_progress,
                              workers=args.workers, backend=backend)
    finally:
        if backend is not None:
            backend.close()
    print(f"best loss: {result['readable']}")
    print(f"fitness (validation Dice on the proxy task): {result['fitness']:.4f}")
    print(f"learn {args.method} finished in {time.perf_counter() - t0:.0f} s; results in {result['out']}/ "
          f"(learned_loss.json, formula.txt, history.csv, evaluations.csv, fitness.png); use it as "
          f"\"learned:{result['out'] / 'learned_loss.json'}\"")
    return 0


def add_learn_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``learn`` on the ``spineloss`` sub-command parsers; returns its parser."""
    p = subparsers.add_parser("learn", help="search for a new loss: genetic programming (GLO), a TaylorGLO "
                                            "family with CMA-ES, or an ML3 meta-learned loss network",
                              description="Search for a loss on a proxy task (configs/learn_*.toml); writes "
                                          "DIR/learned_loss.json, usable as loss \"learned:DIR/learned_loss.json\".")
    p.add_argument("method", choices=METHODS, help="genetic: expression trees (DEAP) then CMA-ES on their constants; "
                                                   "taylor: CMA-ES on a parametric family containing CE, Dice, "
                                                   "Tversky; meta: an ML3 loss network")
    p.add_argument("config", help="the search's TOML file (see configs/learn_*.toml)")
    p.add_argument("--out", help="output folder (default: [experiment] output, else runs/<name>)")
    p.add_argument("--workers", type=int, default=None,
                   help="evaluations in parallel (processes; 0: one per core; default: [learn] workers)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted search from its checkpoint (default); --no-resume deletes the "
                        "folder's search results and starts over")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    from ..backends import add_backend_arguments
    add_backend_arguments(p, "evaluation")
    p.set_defaults(func=_cmd_learn)
    return p
