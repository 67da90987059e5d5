"""What each `uniad-mini` subcommand does, once `cli.py` has parsed and checked its arguments.

`args` is the parsed namespace; `args.options` the UniAD options from --recipe/--seed/--set (None where the
model comes from a checkpoint), `args.device` a torch.device. Each function goes through the public API.
"""
from __future__ import annotations

import contextlib
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import distributed
from ..data import DataError, MVTecAD, default_data_root, load_image
from ..errors import OptionError
from ..evaluation import results_table, write_results
from ..model import UniAD, make_config
from ..pictures import panel, write_pictures
from ..synthetic import SyntheticAD
from . import course, runs
from .benchmark import markdown_tables, run_protocol, seed_list
from .perf import report as speed_report
from .sweep import sweep, sweep_table

CHECKPOINT = "model.pt"
DEMO_EPOCHS = 40  # half the default: the synthetic classes are learnt by then, and the demo stays under 3 minutes
PREDICT_MAX_SIDE = 2048  # predict shows a larger image, and its map, shrunk to this side (memory stays bounded)


def cmd_demo(args):
    seed = make_config(**args.options).seed
    train = SyntheticAD("train", classes=args.classes, seed=seed)
    test = SyntheticAD("test", classes=args.classes, seed=seed)
    print(f"embedded synthetic data set (seed {seed}): classes {', '.join(train.classes)}", file=sys.stderr)
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
            raise OptionError(f"{out / CHECKPOINT} already holds a trained model; continue it with --resume, "
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
    epochs = f" --epochs {args.epochs}" if args.epochs is not None else ""
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


def data_root_or_default(data_root):
    """DATA_ROOT as given, else $UNIAD_DATA, else ../shared/data beside the repository."""
    root = data_root or default_data_root()
    if root is None:
        raise DataError("no DATA_ROOT given, and no ../shared/data beside the repository: pass one or set UNIAD_DATA")
    return root


def cmd_bench_quality(args):
    config = {k: v for k, v in args.options.items() if k not in ("seed", "epochs")}  # seeds and epochs: below
    seeds = seed_list(args.seeds, start=make_config(**args.options).seed)
    out = args.out if args.out is not None else f"runs/bench-quality-{time.strftime('%Y%m%d-%H%M%S')}"
    report = run_protocol(data_root_or_default(args.data_root), args.settings, seeds, args.options.get("epochs"), out,
                          args.classes, pictures=args.pictures, progress=not args.quiet, device=args.device,
                          baselines=args.baselines, **config)
    print(markdown_tables(report))
    print(f"\nwritten to {out}/ (results.json, results.md{', pictures/' if args.pictures else ''}); torch threads "
          f"{torch.get_num_threads()}, device {args.device}", file=sys.stderr)


def cmd_bench_speed(args):
    if args.batch < 1 or args.repeats < 1 or args.pixels < 2:
        raise OptionError("--batch and --repeats must be at least 1, --pixels at least 2")
    speed_report(args.only, args.batch, args.repeats, args.pixels, args.device, **args.options)


def cmd_sweep(args):
    if args.parallel < 1:
        raise OptionError(f"--parallel must be at least 1, got {args.parallel}")
    out = args.out if args.out is not None else f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    records = sweep(args.data_root, args.variants, out, args.device, args.parallel, not args.quiet, args.options,
                    args.classes, args.holdout, points=args.points)
    print(sweep_table(records, args.select))
    print(f"\nper-variant results and curves in {out}/NAME.json", file=sys.stderr)


def cmd_bench_kernel(args):
    from ..kernels.bench import main as kernel_bench  # imports Triton: only when asked for

    return kernel_bench(args.rest)


def cmd_course(args):
    return course.run_command(args)
