"""The `uniad-mini` command (also `python -m uniad_mini`): demo, train, evaluate, predict, benchmark.

Every subcommand goes through the same public API as the notebooks and tests (UniAD, MVTecAD, SyntheticAD).
Errors a user can fix print one line and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .data import DataError, MVTecAD, load_image
from .model import UniAD
from .synthetic import SyntheticAD
from .visualize import panel
from .protocol import write_pictures

CHECKPOINT = "model.pt"


def results_table(results: dict) -> str:
    """{class: {"image_auroc", "pixel_auroc"}} -> a Markdown table in percent, the mean row last."""
    lines = ["| class | image AUROC | pixel AUROC |", "|---|---:|---:|"]
    for name, r in results.items():
        label = f"**{name}**" if name == "mean" else name
        lines.append(f"| {label} | {100 * r['image_auroc']:.1f} | {100 * r['pixel_auroc']:.1f} |")
    return "\n".join(lines)


def cmd_demo(args):
    print("embedded synthetic data set (seed %d): classes cap, carpet, mesh" % args.seed, file=sys.stderr)
    train, test = SyntheticAD("train", seed=args.seed), SyntheticAD("test", seed=args.seed)
    model = UniAD(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model.fit(train, checkpoint=out / CHECKPOINT)
    seconds = time.perf_counter() - start
    test_cache = model.cache(test, desc="test")
    results = model.evaluate(test_cache)
    print(f"\ntrained {model.train_state['epoch']} epochs in {seconds:.0f} s; final-epoch numbers on the test split:\n")
    print(results_table(results))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    n = len(write_pictures(model, test_cache, out / "maps", data=test))
    print(f"\nwrote {n} PNGs (a panel per test image, a ROC plot per class) to {out / 'maps'} "
          f"and the model to {out / CHECKPOINT}")


def cmd_train(args):
    train = MVTecAD(args.data_root, "train", classes=args.classes)
    out = Path(args.out)
    if args.resume:
        model = UniAD.load(out / CHECKPOINT)
    else:
        overrides = {"recipe": args.recipe, "seed": args.seed}
        if args.epochs:
            overrides["epochs"] = args.epochs
        model = UniAD(**overrides)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, checkpoint=out / CHECKPOINT)
    print(f"trained {model.train_state['epoch']} epochs on {len(train)} images of {', '.join(train.classes)} "
          f"in {time.perf_counter() - start:.0f} s; model in {out / CHECKPOINT}")


def cmd_evaluate(args):
    model = UniAD.load(Path(args.run) / CHECKPOINT)
    test = MVTecAD(args.data_root, "test", classes=args.classes, image_size=model.config.image_size)
    results = model.evaluate(test)
    print(results_table(results))
    (Path(args.run) / "results.json").write_text(json.dumps(results, indent=2))
    if args.pictures:
        n = len(write_pictures(model, test, Path(args.run) / "maps"))
        print(f"wrote {n} PNGs (a panel per test image, a ROC plot per class) to {Path(args.run) / 'maps'}")


def cmd_predict(args):
    model = UniAD.load(Path(args.run) / CHECKPOINT)
    out = Path(args.out)
    images = [(Path(p), load_image(p, size=None)) for p in args.images]  # read all first: fail before writing
    out.mkdir(parents=True, exist_ok=True)
    print("| image | score |\n|---|---:|")
    used = set()
    for path, image in images:
        score, amap = model.predict(image[None])
        name = f"{path.stem}_map.png" if path.stem not in used else f"{path.parent.name}_{path.stem}_map.png"
        used.add(path.stem)
        panel(image, amap[0], title=f"{path.name} score {score[0]:.2f}").save(out / name)
        print(f"| {path} | {score[0]:.3f} |")
    print(f"\nwrote {len(images)} anomaly-map panels to {out}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uniad-mini", description="UniAD: one anomaly detector for many classes.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train and evaluate on the embedded synthetic data (a few minutes on CPU)")
    d.add_argument("--out", default="uniad_demo", help="folder for the model and PNG anomaly maps")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train one unified model on DATA_ROOT/*/train/good (MVTec AD layout)")
    t.add_argument("data_root")
    t.add_argument("--out", required=True, help="run folder; the checkpoint is written there after every epoch")
    t.add_argument("--classes", nargs="+", default=None, help="subset of class folders (default: all)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--recipe", choices=["cpu", "paper"], default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="per-class image/pixel AUROC of a trained run on DATA_ROOT/*/test")
    e.add_argument("run")
    e.add_argument("data_root")
    e.add_argument("--classes", nargs="+", default=None)
    e.add_argument("--pictures", action="store_true", help="also write a PNG panel per test image")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="anomaly score and map PNG for each image")
    r.add_argument("run")
    r.add_argument("images", nargs="+")
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_predict)

    # `benchmark` hands its arguments to uniad_mini.protocol (see `main`); listed here for --help
    sub.add_parser("benchmark", help="unified vs separate over seeds, 7 metrics (uniad-mini benchmark --help)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["benchmark"]:  # the protocol runner has its own options
        from .protocol import main as protocol_main

        return protocol_main(argv[1:], prog="uniad-mini benchmark")
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, ValueError, FileNotFoundError, NotADirectoryError, RuntimeError) as e:
        print(f"uniad-mini {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nuniad-mini {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
