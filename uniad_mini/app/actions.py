"""What each `uniad-mini` subcommand does, once `cli.py` has parsed and checked its arguments.

`args` is the parsed namespace; `args.options` the UniAD options from --recipe/--seed/--set (None where the
model comes from a checkpoint), `args.device` a torch.device. Each function goes through the public API.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from .. import distributed, pipeline
from ..checks import open_checked
from ..data import default_data_root
from ..errors import DataError
from ..errors import OptionError
from ..evaluation import left_out, left_out_line, results_table, write_results
from ..config import make_config, saved
from ..model import UniAD
from ..pictures import write_pictures
from ..synthetic import SyntheticAD
from ..bench.quality import markdown_tables, run_protocol, seed_list  # at the top: tests replace run_protocol here
from . import calibrate as calibration_cli
from . import export as export_cli
from . import predict as predict_cli
from . import runs
from .report import evaluation_report

CHECKPOINT = "model.pt"
DEMO_EPOCHS = 40  # half the default: the synthetic classes are learnt by then, and the demo stays under 3 minutes
DEMO_CALIBRATION_IMAGES = 100  # fresh normal images per class for the thresholds: enough to resolve 1% false alarms
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
                  config=saved(model.config))
    normal = SyntheticAD("train", classes=train.classes, seed=train.seed + 1, n_train=DEMO_CALIBRATION_IMAGES)
    model.calibrate(normal, source=f"{len(normal)} fresh normal images (data seed {train.seed + 1})")
    model.save(out / CHECKPOINT)  # with its thresholds: `uniad-mini predict` decides
    print(f"\ndecisions: {calibration_cli.report(model, None)[0].splitlines()[0]}\n")
    print(calibration_cli.table(model.calibration, calibration_cli.measured(model, test_cache)))
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
        model = UniAD.load(out / CHECKPOINT, device, **args.options) if args.resume else UniAD(**args.options)
        model.to(device)
        sets, _ = open_checked(args.data_root, ("train", "test"), args.classes, model.config.image_size,
                               model.config.resize, optional=("test",), decode=False)  # indexed: read below
        calibration_cli.check_rates(args)
        classes = sets["train"].classes
        train, held = calibration_cli.held_out_split(model, sets["train"], args.hold_out)  # --holdout: calibrated after
        check = [d for d in (sets.get("test"), held) if d is not None]
        n_train = len(train)
        # every image read once, all problems of every split in one error, before the run folder is made
        train = pipeline.features_of(model, train, progress=not args.quiet, check=check)
        with run_folder(out, lock=distributed.is_main()):  # only rank 0 writes, so only rank 0 locks
            start = time.perf_counter()
            try:
                model.fit(train, epochs=args.epochs, progress=not args.quiet, checkpoint=out / CHECKPOINT)
            except KeyboardInterrupt:
                raise runs.Interrupted(runs.resume_hint(out / CHECKPOINT, resume_command(args))) from None
            if held is not None and distributed.is_main():
                calibration_cli.calibrate_after_training(model, held, args, out / CHECKPOINT)
        if distributed.is_main():
            print(f"trained {model.train_state['epoch']} epochs on {n_train} images of {', '.join(classes)} "
                  f"in {time.perf_counter() - start:.0f} s on {world} process(es) on {device.type}; model in {out / CHECKPOINT}")
    finally:
        distributed.shutdown()


def checked_splits(args, model, splits, optional=()) -> dict:
    """{split: data set} of DATA_ROOT (any layout), every file read now: all problems in one error, before any
    work (checks.open_checked); what is odd but valid printed as notes."""
    sets, notes = open_checked(args.data_root, splits, args.classes, model.config.image_size, model.config.resize,
                               optional)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return sets


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
    model = UniAD.load(run / CHECKPOINT, args.device, **args.options)
    runs.writable_folder(run)  # results.json goes there: fail now, not after the work
    sets, _ = open_checked(args.data_root, ("test",), args.classes, model.config.image_size, model.config.resize,
                           decode=False)
    test = sets["test"]
    cache = model.cache(test, progress=not args.quiet, desc="test")  # every image read once: all problems at once
    results = model.evaluate(cache, progress=False)
    print(results_table(results))
    if left_out_line(cache):  # defect images with an empty mask: image metrics only
        print(left_out_line(cache), file=sys.stderr)
    write_results(run / "results.json", results, command="evaluate", data_root=str(args.data_root),
                  epochs=model.train_state["epoch"], config=saved(model.config),
                  **({"left_out": left_out(cache)} if left_out(cache) else {}))
    page = evaluation_report(model, cache, test, results, run / "report.html", f"uniad-mini evaluate {run}",
                             [f"data: {args.data_root}; {len(cache)} test images; model: {run / CHECKPOINT}, "
                              f"{model.train_state['epoch']} epochs; {time.strftime('%Y-%m-%d %H:%M')}"])
    print(f"wrote {run / 'results.json'} and {page} (scored on {args.device.type})", file=sys.stderr)
    if args.pictures:
        n = len(write_pictures(model, cache, run / "maps", data=test))
        print(f"wrote {n} PNGs (a panel per test image, a ROC plot per class) to {run / 'maps'}", file=sys.stderr)


def cmd_predict(args):
    graph = args.engine != "torch"  # onnx or openvino: the exported graph, on the CPU (export.engine)
    if graph:
        export_cli.check_format(args.engine, "--engine")  # a missing extra: one line, before anything is read
    model = UniAD.load(Path(args.run) / CHECKPOINT, "cpu" if graph else args.device, **args.options)
    # the graph, exported (or taken from RUN/engines) once `run` has checked the inputs and enters it
    engine = export_cli.engine(model, args.engine, Path(args.run) / "engines") if graph else None
    predict_cli.run(model, args.images, args.out, args.cls, progress=not args.quiet, engine=engine,
                    title=f"uniad-mini predict {args.run}" + (f" --engine {args.engine}" if graph else ""))


def cmd_export(args):
    export_cli.check_format(args.format)  # every refusal before anything is read or written
    export_cli.check_precision(args.format, args.precision)
    export_cli.check_target(args.out)
    model = UniAD.load(Path(args.run) / CHECKPOINT, "cpu", **args.options)
    meta = export_cli.export(model, args.out, args.format, args.precision)
    check, ov = meta["check"], meta["check"].get("openvino")
    print(f"wrote {args.out}: {', '.join(sorted(os.listdir(args.out)))}; the graph against the model on "
          f"{check['images']}: scores within {check['max_score_rel_diff']:.1e} relative, maps within "
          f"{check['max_map_abs_diff']:.1e} (of {check['map_scale']:.3g})"
          + (f"; in {ov['runtime']}: scores within {ov['max_score_rel_diff']:.1e}, maps {ov['max_map_abs_diff']:.1e}"
             if ov else "") + f"; score with: python {shlex.quote(str(Path(args.out) / 'predict.py'))} INPUT... "
          f"--out DIR", file=sys.stderr)


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
    from ..bench.speed import report as speed_report

    if args.batch < 1 or args.repeats < 1 or args.pixels < 2:
        raise OptionError("--batch and --repeats must be at least 1, --pixels at least 2")
    speed_report(args.only, args.batch, args.repeats, args.pixels, args.device, **args.options)


def cmd_sweep(args):
    from ..bench.sweep import kinds_table, sweep, sweep_table

    if args.parallel < 1:
        raise OptionError(f"--parallel must be at least 1, got {args.parallel}")
    out = args.out if args.out is not None else f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    records = sweep(args.data_root, args.variants, out, args.device, args.parallel, not args.quiet, args.options,
                    args.classes, args.holdout, points=args.points, scorings=args.scoring)
    print(sweep_table(records, args.select))
    if kinds_table(records):
        print("\n" + kinds_table(records))
    print(f"\nper-variant results and curves in {out}/NAME.json", file=sys.stderr)


def cmd_bench_kernel(args):
    from ..bench.kernel import main as kernel_bench  # imports Triton: only when asked for

    return kernel_bench(args.rest)


def cmd_course(args):
    from ..course.commands import run_command

    return run_command(args)
