"""The ``spineloss`` command line.

    spineloss demo [--quick] [--out DIR] [--seed S] [--no-resume]   the main job on built-in synthetic data
    spineloss experiment CONFIG.toml [--out DIR] [--data DIR] [--losses a,b] [--force] [--backend local|ray]
                                                         every (loss, fold) of a config, then the table
    spineloss report RUN_DIR [--distance hd|hd95] [--out report.html] [--analysis DIR]
                                                         (re)write and print the table of a run, and its HTML page
    spineloss train CONFIG.toml --loss NAME --fold K|all [--out DIR] [--ddp]      one run (torchrun: DDP)
    spineloss rescore RUN_DIR --out DIR [--postprocess KEY=VALUE]...    score its models with another post-processing
    spineloss predict --model MODEL.pt --input IMG.nii.gz [IMG2 ...] --output SEG.nii.gz [--device auto|cpu|cuda]
    spineloss data phantom [--region lumbar|cervical] [--cases N] --out DIR [--seed S] [--shape D H W]
    spineloss data check DIR                             validate a data set, print its summary
    spineloss analyze [--losses a,b] [--out DIR]         how each loss reacts to known errors on synthetic shapes
    spineloss learn genetic|taylor|meta CONFIG.toml [--out DIR]   search for a new loss (spineloss.learning)

Errors in the user's input (a bad config, a bad data set) print one clear message and exit 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


def _cmd_demo(args) -> int:
    from .demo import demo_config
    from .experiment import run_experiment
    config = demo_config(quick=args.quick, seed=args.seed)
    out = Path(args.out or f"runs/{config.name}")
    t0 = time.perf_counter()
    table = run_experiment(config, out, progress=not args.no_progress, resume=args.resume, force=args.force)
    print("\n" + table)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; results in {out}/ "
          f"(summary.md, summary.csv, summary.tex)")
    return 0


def _cmd_experiment(args) -> int:
    from .experiment import load_config, run_experiment
    config = load_config(args.config)
    if args.data:
        import dataclasses
        if not Path(args.data).is_dir():
            raise ValueError(f"--data {args.data}: no such folder")
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=args.data, phantom=None))
    from .backends import GridFailed, backend_from_arguments
    backend = backend_from_arguments(args)
    try:
        table = run_experiment(config, args.out, progress=not args.no_progress, resume=args.resume, force=args.force,
                               only_losses=args.losses.split(",") if args.losses else None,
                               backend=backend or "local")
    except GridFailed as exc:
        print("\n" + exc.table)
        print(f"spineloss: {exc}", file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.close()
    print("\n" + table)
    return 0


def _cmd_train(args) -> int:
    from .one_run import train_command
    run_dir = train_command(args.config, args.loss, args.fold, args.out, ddp=args.ddp, resume=args.resume,
                            data=args.data)
    if run_dir is not None:   # rank 0 (or the only process)
        print(f"model: {run_dir / 'model.pt'}" + ("" if args.fold == "all" else f"; scores: {run_dir / 'metrics.json'}"))
    return 0


def _cmd_rescore(args) -> int:
    import tomllib

    from .experiment import rescore
    from .postprocess import PostprocessConfig
    try:
        table = tomllib.loads("\n".join(args.postprocess))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--postprocess takes KEY=VALUE items in TOML (e.g. caudal_bodies=5 "
                         f"number_levels=true levels='\"probabilities\"'): {exc}") from exc
    try:
        post = PostprocessConfig(**table)
    except TypeError as exc:
        raise ValueError(f"--postprocess: {exc}; known keys: caudal_bodies, number_levels, levels") from exc
    print(rescore(args.run_dir, post, args.out, force=args.force, label_mode=args.label_mode))
    return 0


def _cmd_report(args) -> int:
    from .report import write_summary
    from .report.html import write_report
    print(write_summary(args.run_dir, distance=args.distance))
    page = write_report(args.run_dir, args.out, analysis=args.analysis, distance=args.distance)
    print(f"wrote {page} ({page.stat().st_size / 1e6:.1f} MB, self-contained: open it in a browser)")
    return 0


def _cmd_predict(args) -> int:
    from .predict import predict_file
    predict_file(args.model, args.input, args.output, device=args.device)
    print(f"wrote {args.output}")
    return 0


def _cmd_phantom(args) -> int:
    from .data.phantom import write_phantom_dataset
    out = write_phantom_dataset(args.out, region=args.region, cases=args.cases, seed=args.seed,
                                shape=tuple(args.shape))
    print(f"wrote {args.cases} {args.region} phantom cases to {out}")
    return 0


def _cmd_check(args) -> int:
    from .data.layout import run_check
    return run_check(args.dir)


def _cmd_analyze(args) -> int:
    from .analysis import write_analysis
    t0 = time.perf_counter()
    losses = [s for s in args.losses.split(",") if s.strip()] if args.losses else None
    paths = write_analysis(args.out, losses)
    print(paths["summary"].read_text())
    print(f"analysis finished in {time.perf_counter() - t0:.1f} s; results in {args.out}/ "
          f"(analysis.csv, summary.md, {len(paths) - 2} PNGs)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spineloss", description="Find the best loss for 3D segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="3 losses x 3 folds on built-in synthetic lumbar MRI")
    p.add_argument("--quick", action="store_true", help="tiny volumes, well under a minute (smoke test)")
    p.add_argument("--out", help="output folder (default runs/demo or runs/demo_quick)")
    p.add_argument("--seed", type=int, default=0, help="folds, initialisation, sampling, augmentation (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue interrupted runs (default) or restart them (--no-resume)")
    p.add_argument("--force", action="store_true",
                   help="rerun finished runs whose recorded config differs (default: stop and say what changed)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("experiment", help="run every (loss, fold) of a TOML config")
    p.add_argument("config", help="the experiment's TOML file (see configs/)")
    p.add_argument("--out", help="output folder (default: [experiment] output, else runs/<name>)")
    p.add_argument("--losses", help="comma-separated subset of the config's loss names")
    p.add_argument("--data", help="the data set folder, instead of the config's [data] path or phantom")
    p.add_argument("--force", action="store_true",
                   help="rerun finished runs whose recorded config differs from this one (their results "
                        "are deleted); without it the command stops and names what changed")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted (loss, fold) from its last.pt (default); --no-resume "
                        "restarts it from scratch. A finished run is reused while its recorded config is unchanged (see --force).")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    from .backends import add_backend_arguments
    add_backend_arguments(p, "run")
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("train", help="one training run of a config: a fold of its grid, or the final model on all cases",
                       description="One training run. --fold K trains and scores the grid's run K (same folder, "
                                   "same checks); --fold all trains on every case and scores nothing (the model to "
                                   "deploy). Under torchrun --nproc_per_node=N (or with --ddp) it runs with "
                                   "DistributedDataParallel: gloo on the CPU, NCCL on CUDA.")
    p.add_argument("config", help="the experiment's TOML file")
    p.add_argument("--loss", required=True, help="one of the config's loss names")
    p.add_argument("--fold", required=True, help="a fold number, or 'all'")
    p.add_argument("--out", help="output folder (default: [experiment] output, else runs/<name>)")
    p.add_argument("--data", help="the data set folder, instead of the config's [data] path or phantom")
    p.add_argument("--ddp", action="store_true",
                   help="join the process group of the launcher's variables (torchrun sets them; a run "
                        "under torchrun with more than one process uses DDP without this flag)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from last.pt (default) or start over (--no-resume)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("rescore", help="score a run folder's models again with another post-processing")
    p.add_argument("run_dir", help="a finished (or partly finished) experiment folder")
    p.add_argument("--postprocess", action="append", default=[], metavar="KEY=VALUE",
                   help="one [postprocess] item in TOML, repeated for more (none: the network's arg-max), e.g. "
                        "--postprocess caudal_bodies=5 --postprocess number_levels=true, or "
                        "--postprocess levels='\"probabilities\"'")
    p.add_argument("--out", required=True, help="the new run folder (tables, per-case CSVs, pictures)")
    p.add_argument("--force", action="store_true", help="replace rescored runs that do not match")
    p.add_argument("--label-mode", choices=["multiclass"], default=None,
                   help="score a binary (foreground) network's run on the levels, numbered by the "
                        "post-processing (with --postprocess caudal_bodies=5 --postprocess number_levels=true)")
    p.set_defaults(func=_cmd_rescore)

    p = sub.add_parser("report", help="write and print the results table of a run folder, and its HTML page")
    p.add_argument("run_dir")
    p.add_argument("--distance", choices=["hd", "hd95"], default=None,
                   help="the Hausdorff column: maximum (hd) or 95th percentile (hd95); default: the run's "
                        "[experiment] table_distance")
    p.add_argument("--out", default=None, metavar="FILE.html",
                   help="the self-contained HTML page to write (default RUN_DIR/report.html)")
    p.add_argument("--analysis", default=None, metavar="DIR",
                   help="a `spineloss analyze --out DIR` folder to include (default: RUN_DIR/analysis "
                        "when it exists)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("predict", help="segment one image with a trained model")
    p.add_argument("--model", required=True, help="a model.pt written by training")
    p.add_argument("--input", required=True, nargs="+", help="the image (one file per channel)")
    p.add_argument("--output", required=True, help="the label map to write (.nii.gz)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the network runs: auto (default) = CUDA when available, else the CPU")
    p.set_defaults(func=_cmd_predict)

    data = sub.add_parser("data", help="data set tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("phantom", help="write a synthetic spine MRI data set (nnU-Net v2 layout)")
    p.add_argument("--region", choices=["lumbar", "cervical"], default="lumbar",
                   help="L1-L5 (default) or C1-C7")
    p.add_argument("--cases", type=int, default=10, metavar="N", help="number of cases (default 10)")
    p.add_argument("--out", required=True, metavar="DIR", help="the data set folder to write")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="the same seed gives the same volumes")
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 40], metavar=("D", "H", "W"),
                   help="volume size in voxels (default 96 96 40)")
    p.set_defaults(func=_cmd_phantom)
    p = data.add_parser("check", help="validate a data set and print its summary",
                        description="Validate a data set and print its summary; every problem is listed "
                                    "with its file, and the exit status is 2 when there is any.")
    p.add_argument("dir", metavar="DIR", help="nnU-Net v2 or MSD data set folder (holding dataset.json)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("analyze", help="how each loss reacts to known errors on synthetic 3D shapes")
    p.add_argument("--losses", help="comma-separated loss names (default: every single loss that needs no "
                                    "special input)")
    p.add_argument("--out", default="runs/analysis", help="output folder (default runs/analysis)")
    p.set_defaults(func=_cmd_analyze)

    from .learning.cli import add_learn_parser
    add_learn_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spineloss`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"spineloss: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spineloss: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
