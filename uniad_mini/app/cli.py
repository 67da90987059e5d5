"""The `uniad-mini` command (also `python -m uniad_mini`): every runnable thing of the project, one subcommand each.

    uniad-mini demo | train | evaluate | predict | calibrate | export | sweep | course   (--help for each)
    uniad-mini bench-quality | bench-speed | bench-kernel                             the benchmarks

Every subcommand but bench-kernel and course takes the same common options, from one parent parser
(`common_options`): --set KEY=VALUE (any UniAD option, see config.Config; parsed by `parse_options`), --recipe,
--seed (the model seed), --threads, --quiet and --device; those that read a data set also take --classes.
evaluate, predict, calibrate, export and train --resume take the model's options from its checkpoint, so they refuse
--recipe, --seed and --set of anything but the run-time choices (config.RUNTIME: backend, fast, compile). bench-kernel hands its arguments to `uniad_mini.bench.kernel` (options of its own).

Every subcommand goes through the same public API as the notebooks and tests (UniAD, the data readers,
evaluation.write_results). The errors a user can fix (`errors.UserError`: a bad option, a bad file or folder;
and a missing file or a permission the OS refused) print one line `uniad-mini CMD: error: MESSAGE` and exit
with status 2; Ctrl-C exits with 130. Anything else -- a plain ValueError, a RuntimeError from torch -- is a
bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import ast
import sys

import torch

from ..errors import OptionError, UserError
from ..config import RECIPES, RUNTIME, make_config
from ..bench.quality import BASELINES, SETTINGS
from . import calibrate, runs
from .actions import (DEMO_EPOCHS, cmd_bench_kernel, cmd_bench_quality, cmd_bench_speed, cmd_course, cmd_demo,
                      cmd_evaluate, cmd_export, cmd_predict, cmd_sweep, cmd_train)

DEVICES = ("cpu", "cuda", "auto")
ENGINES = ("torch", "onnx", "openvino")  # predict --engine
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, PermissionError)
NO_COMMON_OPTIONS = ("bench-kernel", "course")


# --------------------------------------------------------------------------------------------------
# The common options


def parse_options(items: list[str]) -> dict:
    """["hidden_dim=128", "backend=torch"] -> {"hidden_dim": 128, "backend": "torch"}; every --set goes here."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value  # a bare word: a string option such as backend=torch
    return out


def model_options(args) -> dict:
    """UniAD options from --recipe, --seed, --epochs and --set (last wins), checked before any work."""
    given = {"recipe": args.recipe, "seed": args.seed}  # None: not given, the Config default holds
    options = {k: v for k, v in given.items() if v is not None}
    if getattr(args, "epochs", None) is not None:
        options["epochs"] = args.epochs
    options.update(parse_options(args.set))
    try:
        make_config(**options)
    except TypeError as e:  # an unknown option; converted here only, so that a TypeError bug keeps its traceback
        raise OptionError(str(e)) from None
    return options


def resolve_device(name: str) -> torch.device:
    """--device cpu | cuda | auto (CUDA when torch sees a GPU, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    return torch.device(name)


def prepare(args):
    """Apply --threads and --device, and turn --recipe/--seed/--set into `args.options` (or refuse them)."""
    if args.threads is not None:
        if args.threads < 1:
            raise OptionError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    if args.command in ("evaluate", "predict", "calibrate", "export") or getattr(args, "resume", False):
        args.options = parse_options(args.set)
        fixed = sorted(set(args.options) - set(RUNTIME))
        if fixed or args.recipe is not None or args.seed is not None:
            raise OptionError(f"the model's architecture and training options come from its checkpoint here: drop "
                              f"{', '.join(['--set ' + k for k in fixed] + ['--recipe'] * (args.recipe is not None) + ['--seed'] * (args.seed is not None))}"
                              f" (--set takes the run-time choices {', '.join(RUNTIME)} only)")
    else:
        args.options = model_options(args)


def common_options() -> argparse.ArgumentParser:
    """The one parent parser of every subcommand's common options."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any UniAD option (config.Config), repeatable: --set hidden_dim=128 --set backend=torch")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None, help="training recipe (default cpu; see README)")
    g.add_argument("--seed", type=int, default=None,
                   help="the model seed: initial weights, batch order, jitter noise (default 0); "
                   "bench-quality trains from seeds SEED..SEED+N-1")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; "
                   "the tables say how many ran)")
    g.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    g.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs (default auto: CUDA when torch sees a GPU, else the CPU; the summary says which)")
    return p


# --------------------------------------------------------------------------------------------------
# The parser: one function per subcommand

PICTURES = dict(action=argparse.BooleanOptionalAction, default=True,
                help="write a PNG panel per test image and a ROC plot per class (default: yes)")
EPOCHS = dict(type=int, default=None, help="epochs per model (default: the recipe's)")
CLASSES = dict(nargs="+", default=None, help="only these classes (default: all)")
DATA_ROOT = ("an MVTec-layout folder (ROOT/CLASS/train/good, ROOT/CLASS/test/...), another layout README.md "
             "describes, or a TOML file naming the folders of each class")


def _add_demo(sub, common):
    d = sub.add_parser("demo", parents=common, help="train and evaluate on the embedded synthetic data (minutes on CPU)",
                       description="Train on the embedded synthetic data set (generated from --seed too), print the "
                       "per-class table, write results.json, the model and PNG anomaly maps.")
    d.add_argument("--out", default="uniad_demo", help="folder for the model, results.json and maps/ (default uniad_demo)")
    d.add_argument("--epochs", **{**EPOCHS, "help": f"epochs (default {DEMO_EPOCHS})"})
    d.add_argument("--classes", **{**CLASSES, "help": "only these synthetic classes (cap, carpet, mesh; default: all)"})
    d.add_argument("--pictures", **PICTURES)
    d.set_defaults(func=cmd_demo)


def _add_train(sub, common):
    t = sub.add_parser("train", parents=common, help="train one unified model on the normal images of DATA_ROOT",
                       description="Train one unified model on the normal training images of every class.")
    t.add_argument("data_root", help=DATA_ROOT)
    t.add_argument("--out", required=True, help="run folder; the checkpoint is written there after every epoch")
    t.add_argument("--classes", **CLASSES)
    t.add_argument("--epochs", **EPOCHS)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    calibrate.add_options(t)  # --holdout SHARE --fpr --pixel-fpr: thresholds set after training
    t.set_defaults(func=cmd_train)


def _add_evaluate(sub, common):
    e = sub.add_parser("evaluate", parents=common, help="per-class metrics of a trained run on DATA_ROOT's test split",
                       description="Seven per-class metrics of RUN's final model (and, once calibrated, what its "
                       "thresholds catch); writes RUN/results.json and RUN/report.html.")
    e.add_argument("run")
    e.add_argument("data_root", help=DATA_ROOT)
    e.add_argument("--classes", **CLASSES)
    e.add_argument("--pictures", **PICTURES)
    e.set_defaults(func=cmd_evaluate)


def _add_predict(sub, common):
    r = sub.add_parser("predict", parents=common, help="decision, score, defect mask for each image; CSV and report",
                       description="Predict image files, folders (recursively) and globs, one image at a time: "
                       "OUT/predictions.csv, an overlay and a mask PNG per image in OUT/images, OUT/report.html. "
                       "Unreadable files are listed and skipped (exit 2 at the end).")
    r.add_argument("run")
    r.add_argument("images", nargs="+", metavar="INPUT", help="an image file, a folder or a quoted glob")
    r.add_argument("--out", required=True)
    r.add_argument("--class", dest="cls", default=None, help="the class of every image, for its thresholds (default: "
                   "the nearest folder of its path named like a calibrated class, else the global threshold)")
    r.add_argument("--engine", choices=ENGINES, default="torch", help="what scores the images: torch (default, "
                   "the PyTorch model on --device), or the model's exported graph on the CPU, exported and checked "
                   "as `export` does into RUN/engines/ on first use and reused while the model is unchanged: onnx "
                   "(ONNX Runtime; the export extra) or openvino (the openvino extra); the same CSV, PNGs and report")
    r.set_defaults(func=cmd_predict)


def _add_export(sub, common):
    x = sub.add_parser("export", parents=common, help="a run as an ONNX graph and a predict.py that needs no PyTorch",
                       description="Write RUN's model to a new folder OUT: model.onnx (square images in [0, 1] -> "
                       "scores, maps), uniad.json (image size, resize mode, thresholds), predict.py and uniad_graph.py, "
                       "a script that scores images with numpy, Pillow and onnxruntime (or OpenVINO) only. Exported on "
                       "the CPU; the graph is checked against the model before the folder appears.")
    x.add_argument("run")
    x.add_argument("--out", required=True, help="a new folder (an existing one is refused)")
    x.add_argument("--format", choices=("onnx", "openvino"), default="onnx", help="onnx (default; the export "
                   "extra), or openvino: also model.xml/.bin, OpenVINO IR (needs the openvino package)")
    x.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="fp32 (default; scores within 1e-3 "
                   "of the model's), or bf16 with --format openvino: bfloat16 products where the CPU has them (AVX512-"
                   "BF16, AMX), faster, scores within 3e-2, so decisions near a threshold may differ")
    x.set_defaults(func=cmd_export)


def _add_sweep(sub, common):
    w = sub.add_parser("sweep", parents=common, help="recipe variants side by side on one feature cache",
                       description="Train one unified model per variant (the recipe plus KEY=VALUE[,KEY=VALUE...] "
                       "options, or 'base'), several at a time; print final-epoch image / pixel AUROC per class and "
                       "write each variant's results and curve (about ten evaluations along training) to OUT/NAME.json.")
    w.add_argument("data_root", help=DATA_ROOT)
    w.add_argument("--variants", nargs="+", required=True, metavar="VARIANT", help="e.g. base lr=1e-3 layers=4,epochs=20")
    w.add_argument("--classes", **CLASSES)
    w.add_argument("--parallel", type=int, default=1, help="variants trained at once, one process each (default 1)")
    w.add_argument("--out", default=None, help="folder for the per-variant JSON (default runs/sweep-TIME)")
    w.add_argument("--holdout", type=float, default=0.2, metavar="SHARE", help="share of each class's normal training "
                   "images held out for the validation set, with drawn anomalies (default 0.2; 0: none, test only)")
    w.add_argument("--select", choices=("validation", "test"), default="validation",
                   help="which set chooses the bold variant (default validation; the test split is reported beside it)")
    w.add_argument("--points", type=int, default=10, help="evaluations along training per variant (default 10; "
                   "0: the last epoch only, the cheapest)")
    w.add_argument("--scoring", nargs="+", default=[], metavar="SETTING", help="score every trained variant and "
                   "baseline once more with these scoring options, extra rows, nothing retrained: e.g. map_sigma=4 "
                   "score_pool=32,map_sigma=4")
    w.set_defaults(func=cmd_sweep)


def _add_bench_quality(sub, common):
    b = sub.add_parser("bench-quality", parents=common, help="benchmark: per-class metrics over seeds, settings, "
                       "baselines", description="Train and evaluate UniAD in the unified (and the separate) setting "
                       "from seeds SEED..SEED+N-1 (--seed, --seeds N); print the per-class tables (seven metrics, "
                       "mean ± std) in Markdown with the wall time (final-epoch numbers, no model selection on the "
                       "test set); --baselines adds methods that need no training, on the same features.")
    b.add_argument("data_root", nargs="?", default=None,
                   help=DATA_ROOT + " (default: $UNIAD_DATA, else ../shared/data beside the repository)")
    b.add_argument("--seeds", type=int, default=1, help="how many seeds: N models per setting (default 1)")
    b.add_argument("--epochs", **EPOCHS)
    b.add_argument("--settings", nargs="+", choices=SETTINGS, default=["unified"], help="(default: unified)")
    b.add_argument("--baselines", nargs="*", choices=BASELINES, default=[], help="knn: the nearest training token; cnn: the 3 x 3 CNN "
                   "reconstructor (trained); either adds memory and scoring time against the training set")
    b.add_argument("--classes", **CLASSES)
    b.add_argument("--out", default=None, help="run folder for results.json/.md and pictures (default runs/bench-quality-TIME)")
    b.add_argument("--pictures", **{**PICTURES, "default": False, "help": "write the first seed's PNG panels and ROC plots"})
    b.set_defaults(func=cmd_bench_quality)


def _add_bench_speed(sub, common):
    f = sub.add_parser("bench-speed", parents=common, help="benchmark: inference, training-step and metric speed",
                       description="Time inference, the training step and the metrics on random inputs.")
    f.add_argument("--batch", type=int, default=8, help="images per batch (default 8, the training batch)")
    f.add_argument("--repeats", type=int, default=3, help="timed repetitions, the best is kept (default 3)")
    f.add_argument("--pixels", type=float, default=10e6, help="scores for the metric benchmark (default 10M)")
    f.add_argument("--only", nargs="+", choices=("attention", "export", "inference", "training", "profile", "metrics"),
                   default=("attention", "inference", "training", "metrics"),
                   help="profile: the training table with FLOPs, the matmul peak and op-by-op tables")
    f.set_defaults(func=cmd_bench_speed)


def _add_bench_kernel(sub):
    k = sub.add_parser("bench-kernel", add_help=False, help="benchmark: the Triton kernel against PyTorch paths "
                       "(CUDA GPU, or --static without one; its own options: uniad-mini bench-kernel --help)")
    k.set_defaults(func=cmd_bench_kernel)


def _add_course(sub):  # strip OUT, grade DIR [DIR ...] [--csv/--json/--timeout], hint NAME [LEVEL], parts NAME
    from ..course.commands import add_parser

    add_parser(sub, func=cmd_course)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uniad-mini", description="UniAD: one anomaly detector for many classes.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [common_options()]
    for add in (_add_demo, _add_train, _add_evaluate, _add_predict, calibrate.add_parser, _add_export, _add_sweep,
                _add_bench_quality, _add_bench_speed):
        add(sub, common)
    _add_bench_kernel(sub)
    _add_course(sub)
    return p


def main(argv=None) -> int:
    """The command line; returns the exit status (0 done, 2 a user error, 130 interrupted)."""
    p = parser()
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "bench-kernel":
        args.rest = rest  # every argument is the kernel benchmark's
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command not in NO_COMMON_OPTIONS:
            prepare(args)
        return args.func(args) or 0
    except USER_ERRORS as e:  # raised on purpose, with a message that says what to fix
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
