"""The `uniad-mini` command (also `python -m uniad_mini`): every runnable thing of the project, one subcommand each.

    uniad-mini demo | train | evaluate | predict | benchmark | bench | perf | sweep | kernel-bench | course   (--help)

Every subcommand but kernel-bench and course takes the same common options, from one parent parser (`common_options`):
--set KEY=VALUE (any UniAD option, see model.Config; parsed by `parse_options`), --recipe, --seed (the model
seed), --threads, --quiet and --device. evaluate, predict and train --resume take the model's options from
its checkpoint, so they refuse --set, --recipe and --seed. kernel-bench hands its arguments to
`uniad_mini.kernels.bench` (a CUDA GPU benchmark with options of its own).

Every subcommand goes through the same public API as the notebooks and tests (UniAD, MVTecAD, SyntheticAD,
evaluation.write_results). Errors a user can fix (a missing folder, an unreadable image, an unknown option,
no CUDA) print one line `uniad-mini CMD: error: MESSAGE` and exit with status 2; Ctrl-C exits with 130.
Anything else -- a RuntimeError from torch included -- keeps its traceback.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import distributed
from . import course, runs
from ..data import DataError, MVTecAD, default_data_root, load_image
from ..evaluation import results_table, write_results
from ..model import RECIPES, UniAD, make_config
from ..pictures import panel, write_pictures
from ..synthetic import SyntheticAD

CHECKPOINT = "model.pt"
DEMO_EPOCHS = 40  # half the default: the synthetic classes are learnt by then, and the demo stays under 3 minutes
PREDICT_MAX_SIDE = 2048  # predict shows a larger image, and its map, shrunk to this side (memory stays bounded)
DEVICES = ("cpu", "cuda", "auto")
USER_ERRORS = (DataError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


# --------------------------------------------------------------------------------------------------
# The common options


def parse_options(items: list[str]) -> dict:
    """["hidden_dim=128", "backend=torch"] -> {"hidden_dim": 128, "backend": "torch"}; every --set goes here."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value  # a bare word: a string option such as backend=torch
    return out


def model_options(args) -> dict:
    """UniAD options from --recipe, --seed, --epochs and --set (last wins), checked before any work."""
    options = {"recipe": args.recipe or "cpu", "seed": 0 if args.seed is None else args.seed}
    if getattr(args, "epochs", None):
        options["epochs"] = args.epochs
    options.update(parse_options(args.set))
    try:
        make_config(**options)
    except TypeError as e:  # an unknown option; converted here only, so that a TypeError bug keeps its traceback
        raise ValueError(str(e)) from None
    return options


def resolve_device(name: str) -> torch.device:
    """--device cpu | cuda | auto (CUDA when torch sees a GPU, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    return torch.device(name)


def prepare(args):
    """Apply --threads and --device, and turn --recipe/--seed/--set into `args.options` (or refuse them)."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    if args.command in ("evaluate", "predict") or getattr(args, "resume", False):
        if args.set or args.recipe is not None or args.seed is not None:
            raise ValueError("the model's options come from its checkpoint here: drop --set, --recipe and --seed")
        args.options = None
    else:
        args.options = model_options(args)


def common_options() -> argparse.ArgumentParser:
    """The one parent parser of every subcommand's common options."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any UniAD option (model.Config), repeatable: --set hidden_dim=128 --set backend=torch")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None, help="training recipe (default cpu; see README)")
    g.add_argument("--seed", type=int, default=None,
                   help="the model seed: initial weights, batch order, jitter noise (default 0); "
                   "benchmark trains from seeds SEED..SEED+N-1")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    g.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where the model runs (default cpu; auto: CUDA when available)")
    return p


# --------------------------------------------------------------------------------------------------
# The subcommands


def cmd_demo(args):
    seed = args.options["seed"]
    print(f"embedded synthetic data set (seed {seed}): classes cap, carpet, mesh", file=sys.stderr)
    train, test = SyntheticAD("train", seed=seed), SyntheticAD("test", seed=seed)
    model = UniAD(**{"epochs": DEMO_EPOCHS, **args.options}).to(args.device)  # --epochs still wins
    out = Path(args.out)
    with run_folder(out):
        _demo(args, model, train, test, out)


def _demo(args, model, train, test, out: Path):
    start = time.perf_counter()
    model.fit(train, progress=not args.quiet, checkpoint=out / CHECKPOINT)
    seconds = time.perf_counter() - start
    test_cache = model.cache(test, progress=not args.quiet, desc="test")
    results = model.evaluate(test_cache)
    print(f"\ntrained {model.train_state['epoch']} epochs in {seconds:.0f} s; final-epoch numbers on the test split:\n")
    print(results_table(results))
    write_results(out / "results.json", results, command="demo", epochs=model.train_state["epoch"],
                  config=asdict(model.config))
    print(f"\nwrote {out / 'results.json'} and the model to {out / CHECKPOINT}", file=sys.stderr)
    if args.pictures:
        n = len(write_pictures(model, test_cache, out / "maps", data=test))
        print(f"wrote {n} PNGs (a panel per test image, a ROC plot per class) to {out / 'maps'}", file=sys.stderr)


def cmd_train(args):
    rank, world, device = distributed.init_from_env(args.device)  # under torchrun: join the process group
    try:
        out = Path(args.out)
        if not args.resume and (out / CHECKPOINT).exists():
            raise ValueError(f"{out / CHECKPOINT} already holds a trained model; continue it with --resume, "
                             f"or pick another --out (nothing was overwritten)")
        model = UniAD.load(out / CHECKPOINT) if args.resume else UniAD(**args.options)
        model.to(device)
        train = MVTecAD(args.data_root, "train", classes=args.classes, image_size=model.config.image_size)
        with run_folder(out, lock=distributed.is_main()):  # only rank 0 writes, so only rank 0 locks
            start = time.perf_counter()
            try:
                model.fit(train, epochs=args.epochs, progress=not args.quiet, checkpoint=out / CHECKPOINT)
            except KeyboardInterrupt:
                raise runs.Interrupted(runs.resume_hint(out / CHECKPOINT, resume_command(args))) from None
        if distributed.is_main():
            print(f"trained {model.train_state['epoch']} epochs on {len(train)} images of {', '.join(train.classes)} "
                  f"in {time.perf_counter() - start:.0f} s on {world} process(es); model in {out / CHECKPOINT}")
    finally:
        distributed.shutdown()


def run_folder(out: Path, lock: bool = True):
    """--out created and checked writable, then held with its lock (docs/reliability.md) while the run writes."""
    runs.writable_folder(out)
    return runs.RunLock(out) if lock else contextlib.nullcontext()


def resume_command(args) -> str:
    """The command that continues an interrupted `train` run exactly."""
    epochs = f" --epochs {args.epochs}" if args.epochs else ""
    return f"uniad-mini train {shlex.quote(str(args.data_root))} --out {shlex.quote(str(args.out))} --resume{epochs}"


def cmd_evaluate(args):
    run = Path(args.run)
    model = UniAD.load(run / CHECKPOINT).to(args.device)
    runs.writable_folder(run)  # results.json goes there: fail now, not after the work
    test = MVTecAD(args.data_root, "test", classes=args.classes, image_size=model.config.image_size)
    cache = model.cache(test, progress=not args.quiet, desc="test")
    results = model.evaluate(cache)
    print(results_table(results))
    write_results(run / "results.json", results, command="evaluate", data_root=str(args.data_root),
                  epochs=model.train_state["epoch"], config=asdict(model.config))
    if args.pictures:
        n = len(write_pictures(model, cache, run / "maps", data=test))
        print(f"wrote {n} PNGs (a panel per test image, a ROC plot per class) to {run / 'maps'}", file=sys.stderr)


def cmd_predict(args):
    model = UniAD.load(Path(args.run) / CHECKPOINT).to(args.device)
    out = Path(args.out)
    images = [(Path(p), load_image(p, size=None, max_side=PREDICT_MAX_SIDE)) for p in args.images]  # all first
    runs.writable_folder(out)  # a file, or a folder that cannot be written: one line, before any work
    print("| image | score |\n|---|---:|")
    used = set()
    for path, image in images:
        score, amap = model.predict(image[None])
        name = f"{path.stem}_map.png" if path.stem not in used else f"{path.parent.name}_{path.stem}_map.png"
        used.add(path.stem)
        panel(image, amap[0], title=f"{path.name} score {score[0]:.2f}").save(out / name)
        print(f"| {path} | {score[0]:.3f} |")
    print(f"\nwrote {len(images)} anomaly-map panels to {out}", file=sys.stderr)


def cmd_benchmark(args):
    from .benchmark import markdown_tables, run_protocol, seed_list

    config = {k: v for k, v in args.options.items() if k not in ("seed", "epochs")}  # seeds and epochs: below
    seeds = seed_list(args.seeds, start=args.options["seed"])
    out = args.out or f"runs/benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    report = run_protocol(args.data_root, args.settings, seeds, args.options.get("epochs"), out, args.classes,
                          pictures=args.pictures, progress=not args.quiet, device=args.device, **config)
    print(markdown_tables(report))
    print(f"\nwritten to {out}/ (results.json, results.md{', pictures/' if args.pictures else ''})", file=sys.stderr)


def cmd_bench(args):
    from .bench import run

    data_root = args.data_root or default_data_root()
    if data_root is None:
        raise DataError("no DATA_ROOT given, and no ../shared/data beside the repository: pass one or set UNIAD_DATA")
    results, t, baseline = run(data_root, progress=not args.quiet, knn=args.knn, device=args.device, **args.options)
    cfg = make_config(**args.options)
    shown = "".join(f", {k}={v}" for k, v in parse_options(args.set).items() if k not in ("recipe", "seed"))
    print(f"\nunified model, recipe {cfg.recipe!r}, seed {cfg.seed}{shown}, {t['epochs']} epochs on {t['images']} "
          f"training images, torch threads {torch.get_num_threads()}, device {args.device}")
    print(f"feature caching {t['cache']:.0f} s, training {t['train']:.0f} s; final-epoch numbers:\n")
    print(results_table(results))
    if baseline is not None:
        print("\nnearest-training-token baseline on the same standardised features (no training):\n")
        print(results_table(baseline))


def cmd_perf(args):
    from .perf import report

    if args.batch < 1 or args.repeats < 1 or args.pixels < 2:
        raise ValueError("--batch and --repeats must be at least 1, --pixels at least 2")
    report(args.only, args.batch, args.repeats, args.pixels, args.device, **args.options)


def cmd_sweep(args):
    from .sweep import sweep, sweep_table

    if args.parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {args.parallel}")
    out = args.out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    records = sweep(args.data_root, args.variants, out, args.device, args.parallel, not args.quiet, args.options)
    print(sweep_table(records))
    print(f"\nper-variant curves in {out}/NAME.json", file=sys.stderr)


def cmd_kernel_bench(args):
    from ..kernels.bench import main as kernel_bench  # imports Triton: only here

    return kernel_bench(args.rest)


# --------------------------------------------------------------------------------------------------
# The parser and main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uniad-mini", description="UniAD: one anomaly detector for many classes.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [common_options()]
    pictures = dict(action=argparse.BooleanOptionalAction, default=True,
                    help="write a PNG panel per test image and a ROC plot per class (default: yes)")
    epochs = dict(type=int, default=None, help="epochs per model (default: the recipe's)")
    classes = dict(nargs="+", default=None, help="only these class folders (default: all)")

    d = sub.add_parser("demo", parents=common, help="train and evaluate on the embedded synthetic data (minutes on CPU)",
                       description="Train on the embedded synthetic data set (generated from --seed too), print the "
                       "per-class table, write results.json, the model and PNG anomaly maps.")
    d.add_argument("--out", default="uniad_demo", help="folder for the model, results.json and maps/ (default uniad_demo)")
    d.add_argument("--epochs", **epochs)
    d.add_argument("--pictures", **pictures)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", parents=common, help="train one unified model on DATA_ROOT/*/train/good",
                       description="Train one unified model on the normal images of every class (MVTec AD layout).")
    t.add_argument("data_root")
    t.add_argument("--out", required=True, help="run folder; the checkpoint is written there after every epoch")
    t.add_argument("--classes", **classes)
    t.add_argument("--epochs", **epochs)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", parents=common, help="per-class metrics of a trained run on DATA_ROOT/*/test",
                       description="Seven per-class metrics of RUN's final model; writes RUN/results.json.")
    e.add_argument("run")
    e.add_argument("data_root")
    e.add_argument("--classes", **classes)
    e.add_argument("--pictures", **pictures)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", parents=common, help="anomaly score and map PNG for each image")
    r.add_argument("run")
    r.add_argument("images", nargs="+")
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_predict)

    b = sub.add_parser("benchmark", parents=common, help="unified vs separate over seeds, 7 metrics, mean ± std",
                       description="Train and evaluate UniAD in the unified and the separate setting from seeds "
                       "SEED..SEED+N-1 (--seed, --seeds N); print the per-class tables (seven metrics, mean ± std) "
                       "in Markdown (final-epoch numbers, no model selection on the test set).")
    b.add_argument("data_root", help="a folder in the MVTec AD layout (ROOT/CLASS/train/good, ROOT/CLASS/test/...)")
    b.add_argument("--seeds", type=int, default=5, help="how many seeds: N models per setting (default 5)")
    b.add_argument("--epochs", **epochs)
    b.add_argument("--settings", nargs="+", choices=("unified", "separate"), default=["unified", "separate"])
    b.add_argument("--classes", **classes)
    b.add_argument("--out", default=None, help="run folder for results.json/.md and pictures (default runs/benchmark-TIME)")
    b.add_argument("--pictures", **{**pictures, "help": "write the first seed's PNG panels and ROC plots (default: yes)"})
    b.set_defaults(func=cmd_benchmark)

    n = sub.add_parser("bench", parents=common, help="one unified model on real data, timed (--knn: a baseline)",
                       description="Train one unified model on every class of DATA_ROOT; print per-class metrics "
                       "and the wall time of feature caching and training.")
    n.add_argument("data_root", nargs="?", default=None,
                   help="MVTec-layout folder (default: $UNIAD_DATA, else ../shared/data beside the repository)")
    n.add_argument("--epochs", **epochs)
    n.add_argument("--knn", action="store_true", help="also print the nearest-training-token baseline")
    n.set_defaults(func=cmd_bench)

    f = sub.add_parser("perf", parents=common, help="inference, training-step and metric speed tables",
                       description="Time inference, the training step and the metrics on random inputs.")
    f.add_argument("--batch", type=int, default=8, help="images per batch (default 8, the training batch)")
    f.add_argument("--repeats", type=int, default=3, help="timed repetitions, the best is kept (default 3)")
    f.add_argument("--pixels", type=float, default=10e6, help="scores for the metric benchmark (default 10M)")
    f.add_argument("--only", nargs="+", choices=("inference", "training", "metrics"),
                   default=("inference", "training", "metrics"))
    f.set_defaults(func=cmd_perf, threads=2)

    w = sub.add_parser("sweep", parents=common, help="recipe variants side by side on one feature cache",
                       description="Train one unified model per variant (the recipe plus KEY=VALUE[,KEY=VALUE...] "
                       "options, or 'base'), several at a time; print final-epoch image / pixel AUROC per class and "
                       "write each variant's curve (about ten evaluations along training) to OUT/NAME.json.")
    w.add_argument("data_root", help="a folder in the MVTec AD layout")
    w.add_argument("--variants", nargs="+", required=True, metavar="VARIANT", help="e.g. base lr=1e-3 layers=4,epochs=20")
    w.add_argument("--parallel", type=int, default=1, help="variants trained at once, one process each (default 1)")
    w.add_argument("--out", default=None, help="folder for the per-variant JSON (default runs/sweep-TIME)")
    w.set_defaults(func=cmd_sweep)

    k = sub.add_parser("kernel-bench", add_help=False, help="the Triton kernel against PyTorch paths (CUDA GPU; "
                       "its own options: uniad-mini kernel-bench --help)")
    k.set_defaults(func=cmd_kernel_bench)

    c = sub.add_parser("course", help="course assignments: a student copy (strip OUT) and its grader (grade DIR)")
    cs = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    cs.add_parser("strip", help="write a student copy: each marked part raises").add_argument("path", metavar="OUT")
    cs.choices["strip"].add_argument("--keep-solutions", action="store_true", help="copy the marked parts as they are")
    cs.add_parser("grade", help="run each assignment's tests on DIR; print the scores").add_argument("path", metavar="DIR")
    c.set_defaults(func=course.run_command, keep_solutions=False)
    return p


def main(argv=None) -> int:
    """The command line; returns the exit status (0 done, 2 a user error, 130 interrupted)."""
    p = parser()
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "kernel-bench":
        args.rest = rest  # every argument is the kernel benchmark's
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command not in ("kernel-bench", "course"):  # neither takes the common options
            prepare(args)
        return args.func(args) or 0
    except USER_ERRORS as e:  # DataError is a ValueError too
        return error(args.command, str(e))
    except OSError as e:  # a full or read-only disk is one line; any other OSError keeps its traceback
        if runs.disk_error(e) is None:
            raise
        return error(args.command, runs.disk_error(e))
    except KeyboardInterrupt as e:
        hint = f"; {e.hint}" if isinstance(e, runs.Interrupted) else ""
        print(f"\nuniad-mini {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


def error(command: str, message: str) -> int:
    """Print `uniad-mini COMMAND: error: MESSAGE` on one line (a message's own line breaks become spaces)."""
    print(f"uniad-mini {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
