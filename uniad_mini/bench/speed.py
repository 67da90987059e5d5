"""Speed benchmarks: three Markdown tables, measured in one run on this machine's CPU.

    uniad-mini bench-speed               # a few minutes on 2 cores

Every table puts the plain reference path (`fast=False`, attention by hand) beside the fast path (`fast=True`:
the fused optimizer and clipping, the folded backbone, decoding in threads; attention "auto"), timed
interleaved in one run (medians), so that their ratio holds even when other jobs share the cores.

0. Export (`--only export`): the exported graphs (graph.py) in ONNX Runtime and OpenVINO against eager PyTorch,
   batch 1 and 8, the backbone and the transformer apart, and each stage's GFLOP/s against the measured roof
   (engines.py).
0. Attention (`--only attention`): a training step and a forward pass with each attention backend, fp32 and
   bf16: the measurement behind `attention.AUTO`, the backend "auto" takes per device and precision.

1. Inference: images/s of the whole pipeline (`UniAD.predict`), how the time splits between the frozen
   backbone, the reconstruction transformer, and the anomaly map + image score; the feature cache's images/s.
2. Training: seconds per step with cached backbone features (what `fit` does), plain and fast, fp32 and bf16
   (compiled too with `--set compile=true`), GFLOP/s, epochs extrapolated. `--only profile` adds the FLOPs
   counted by hand and by torch's counter, this machine's matmul peak and op-by-op tables (roofline.py).
3. Metrics: the hand-written pixel AUROC and AUPRO (metrics.py) on 10M scores. The package does not
   import scikit-learn (a test oracle only): `python docs/scripts/metric_speed_vs_sklearn.py` times the same
   table side by side with scikit-learn.

Inputs are random (timing does not depend on the picture): images uniform in [0, 1], maps uniform noise
plus a bump on the defect squares. No timing here is asserted by a test: wall time depends on the load.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import metrics
from ..evaluation import markdown_table
from ..scoring import anomaly_map, image_score
from ..attention import AUTO
from ..config import train_settings
from ..model import UniAD, build_transformer
from ..training import Compiled, make_optimizer, native_bf16, resolve_precision, train_step
from ..transformer import OnTokens
from .engines import exported
from .roofline import counted_flops, interleaved, op_table, peak_table, step_flops, timed

# training images: the dev set in ../shared/data (bottle 209 + grid 25 + hazelnut_toy 24), full MVTec AD
EPOCH_SIZES = {"dev set (258 images)": 258, "MVTec AD (3,629 images)": 3629}


def _best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls (after one warm-up): the least disturbed by other jobs."""
    fn()
    return min(timed(fn) for _ in range(repeats))


# --------------------------------------------------------------------------------------------------


def _pair(options: dict):
    """(plain, fast): the model of `options` on the plain reference path and on the fast path, same weights."""
    return UniAD(**{**options, "fast": False}), UniAD(**{**options, "fast": True})


def attention(options: dict, batch: int, repeats: int, device="cpu") -> str:
    """Seconds per training step and per forward pass of the reconstruction transformer with each attention
    backend, in fp32 and bf16 (the fast optimizer throughout), timed interleaved; which "auto" takes here."""
    cfg = UniAD(**options).config
    C, grid = 192, (cfg.image_size // 16, cfg.image_size // 16)
    feats = torch.randn(batch, C, *grid, device=device)
    s = dataclasses.replace(train_settings(cfg), fast=True)
    rows = []
    for precision in ("fp32", "bf16"):
        nets = {}
        for backend in ("torch", "sdpa"):
            torch.manual_seed(0)
            net = OnTokens(build_transformer(dataclasses.replace(cfg, backend=backend), C, grid)).to(device).train()
            nets[backend] = (net, make_optimizer(net.parameters(), s))
        variants = {}
        for backend, (net, opt) in nets.items():
            variants[("step", backend)] = lambda n=net, o=opt: train_step(n, o, feats, s.grad_clip, precision=precision,
                                                                          foreach=True)

            def forward(n=net):
                with torch.no_grad(), torch.autocast(feats.device.type, torch.bfloat16, enabled=precision == "bf16"):
                    n.eval()(feats)
                n.train()
            variants[("forward", backend)] = forward
        t = interleaved(variants, repeats)
        for what in ("step", "forward"):
            plain, sdpa = t[(what, "torch")], t[(what, "sdpa")]
            rows.append([f"{what}, {precision}", f"{plain * 1000:.0f}", f"{sdpa * 1000:.0f}", f"{plain / sdpa:.2f}x",
                         AUTO.get((torch.device(device).type, precision), "torch")])
    return markdown_table([f"transformer (batch {batch})", "torch (plain), ms", "sdpa, ms", "sdpa speed-up",
                           '"auto" takes'], rows)


@torch.no_grad()
def inference(options: dict, batch: int, repeats: int, device="cpu") -> str:
    """images/s of predict() on the plain and the fast path side by side, the fast path's stages, and the
    feature cache (images decoded from PNG files, backbone) with and without decoding in parallel."""
    plain, fast = (m.to(device).eval() for m in _pair(options))
    S = fast.config.image_size
    images = torch.rand(batch, 3, S, S, device=device)  # (B, 3, S, S)
    feats = fast.features(images)  # (B, C, 14, 14)
    target, rec = fast.standardize(feats), fast.reconstruct(feats)
    variants = {
        "whole pipeline (`predict`), plain path": lambda: plain.predict(images),
        "whole pipeline (`predict`), fast path": lambda: fast.predict(images),
        "backbone, plain (EfficientNet taps + stacking)": lambda: plain.features(images),
        "backbone, fast": lambda: fast.features(images),
        "reconstruction transformer, plain": lambda: plain.reconstruct(feats),
        "reconstruction transformer, fast": lambda: fast.reconstruct(feats),
        "anomaly map + image score": lambda: image_score(anomaly_map(rec, target, (S, S))),
    }
    t = interleaved(variants, repeats)
    base = t["whole pipeline (`predict`), plain path"]
    rows = [[name, f"{1000 * s / batch:.1f}", f"{batch / s:.1f}", f"{base / s:.2f}x" if "whole" in name else ""]
            for name, s in t.items()]
    table = markdown_table(["stage", "ms / image", "images / s", "speed-up"], rows)
    return table + "\n\n" + cache_speed(plain, fast, repeats)


def cache_speed(plain: UniAD, fast: UniAD, repeats: int, n: int = 32) -> str:
    """images/s of `UniAD.cache` over n PNG files (random 256 x 256 pictures, MVTec layout, in a temporary
    folder): the plain path (decode, then compute) against the fast path (decoding in parallel with compute)."""
    from ..data import MVTecAD

    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "item" / "train" / "good"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        data = MVTecAD(root, split="train", image_size=fast.config.image_size)
        t = interleaved({"plain": lambda: plain.cache(data, batch_size=16, progress=False),
                          "fast": lambda: fast.cache(data, batch_size=16, progress=False)}, max(1, repeats // 2))
    return (f"Feature cache (`UniAD.cache`, batch 16, {n} PNG files of 256 x 256 decoded and resized): plain "
            f"{n / t['plain']:.1f} images/s, fast {n / t['fast']:.1f} images/s ({t['plain'] / t['fast']:.2f}x).")


def training(options: dict, batch: int, repeats: int, device="cpu", profile: bool = False) -> str:
    """Median seconds per training step, plain and fast paths in fp32 and bf16 (and compiled when the model's
    config says compile=True), timed interleaved; GFLOP/s against the FLOPs of a step; epoch extrapolations.
    profile=True adds the FLOP check, the matmul peak and the op-by-op tables (roofline.py)."""
    plain, fast = (m.to(device) for m in _pair(options))
    S = fast.config.image_size
    images = torch.rand(batch, 3, S, S, device=device)
    feats = fast.standardize(fast.features(images))  # (B, C, h, w), what the loop trains on
    s = train_settings(plain.config)
    own = resolve_precision(s.precision, feats.device)
    net_p, net_f = plain.reconstructor().train(), fast.reconstructor().train()
    opt_p = make_optimizer(net_p.parameters(), s)
    opt_f = make_optimizer(net_f.parameters(), dataclasses.replace(s, fast=True))

    def plain_step(precision):
        return lambda: train_step(net_p, opt_p, feats, s.grad_clip, precision=precision)

    def fast_step(precision, net=net_f):
        return lambda: train_step(net, opt_f, feats, s.grad_clip, precision=precision, foreach=True)

    variants = {"plain, fp32": plain_step("fp32"), "plain, bf16": plain_step("bf16"),
                "fast, fp32": fast_step("fp32"), "fast, bf16": fast_step("bf16")}
    compiled_note = ""
    if fast.config.compile:
        compiled = Compiled(net_f)
        variants[f"fast + torch.compile, {own}"] = fast_step(own, compiled)
        start = time.perf_counter()
        variants[f"fast + torch.compile, {own}"]()
        compiled_note = (f" Compiling the step (its first call, once per run and batch shape) took "
                         f"{time.perf_counter() - start:.0f} s, not counted above.")
    t = interleaved(variants, repeats)
    C, (h, w) = fast.channels, fast.grid
    cfg = fast.config
    flops = step_flops(batch, h * w, C, cfg.hidden_dim, cfg.ffn_dim, cfg.layers)
    today = t[f"plain, {own}"]
    bf16_too = own != "bf16"  # a second ratio column only where the model's own precision is not bf16
    rows = [[name, f"{sec:.3f}", f"{flops / sec / 1e9:.0f}", f"{today / sec:.2f}x"]
            + [f"{t['plain, bf16'] / sec:.2f}x"] * bf16_too for name, sec in t.items()]
    table = markdown_table(["step (batch %d)" % batch, "s / step (median)", "GFLOP/s", f"vs plain {own}"]
                           + ["vs plain bf16"] * bf16_too, rows)
    best = min([t[f"fast, {own}"]] + [v for k, v in t.items() if "compile" in k])
    epochs = []
    for name, n in EPOCH_SIZES.items():
        k = math.ceil(n / batch)
        epochs.append([name, str(k), f"{k * today:.0f}", f"{k * best:.0f}",
                       f"{cfg.epochs * k * today / 60:.0f}", f"{cfg.epochs * k * best / 60:.0f}"])
    etable = markdown_table(["training set", "steps / epoch", f"s / epoch, plain {own}", f"s / epoch, fast {own}",
                             f"min / {cfg.epochs} epochs, plain", f"min / {cfg.epochs} epochs, fast"], epochs)
    note = (f"A step is {flops / 1e9:.1f} GFLOP (forward + backward, counted by hand; roofline.py). This model "
            f"trains in {own} (precision={s.precision!r}; bf16 is native here: {native_bf16(feats.device)}); the fast "
            f"path is fast={cfg.fast}, compile={cfg.compile} in its config. Medians of {repeats} interleaved steps "
            f"after a warm-up; epoch times are these x steps per epoch, not timed whole epochs.{compiled_note}")
    out = table + "\n\n" + etable + "\n\n" + note
    if profile:
        out += "\n\n" + _profile(plain_step(own), fast_step(own), flops, h * w * batch, cfg, repeats)
    return out


def _profile(plain_step, fast_step, flops: int, tokens: int, cfg, repeats: int) -> str:
    counted = counted_flops(plain_step)
    peaks, roof = peak_table(tokens, cfg.hidden_dim, cfg.ffn_dim, repeats)
    return "\n\n".join([
        f"FLOPs of one step: {flops:,} counted by hand, {counted:,} by torch.utils.flop_counter "
        f"({'the same' if counted == flops else f'{counted / flops:.3f}x'}). Roof: {roof:.0f} GFLOP/s, so no step "
        f"of this model can take less than {flops / roof / 1e9:.3f} s here.",
        "Matrix-multiply peak (median of %d):\n\n" % repeats + peaks,
        "Where a plain step's time goes (torch.profiler, self CPU time):\n\n" + op_table(plain_step),
        "Where a fast step's time goes:\n\n" + op_table(fast_step)])


def metric_speed(pixels: int, repeats: int, oracles: dict | None = None, oracle_name: str = "oracle") -> str:
    """Hand-written pixel AUROC and AUPRO timed on `pixels` float32 scores.

    oracles: {"pixel AUROC": fn(maps, masks), "AUPRO (FPR <= 0.3)": fn(maps, masks)}, other implementations
    timed side by side on the same scores (docs/scripts/metric_speed_vs_sklearn.py passes scikit-learn's).
    """
    side = 224
    n = max(2, round(pixels / side**2))
    rng = np.random.default_rng(0)
    masks = np.zeros((n, side, side), dtype=bool)
    for i in range(n // 2, n):  # the second half of the images has one or two defects
        for _ in range(1 + i % 2):
            y, x = rng.integers(0, side - 40, 2)
            h, w = rng.integers(4, 40, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = (rng.random(masks.shape, dtype=np.float32) + 0.7 * masks).astype(np.float32)  # (n, 224, 224)
    ours = {"pixel AUROC": lambda: metrics.auroc(maps, masks), "AUPRO (FPR <= 0.3)": lambda: metrics.aupro(maps, masks)}
    rows = []
    for name, fn in ours.items():
        value, t_ours = fn(), _best_time(fn, repeats)
        row = [name, f"{t_ours:.2f}", f"{value:.6f}"]
        if oracles:
            theirs = lambda: oracles[name](maps, masks)  # noqa: E731
            reference, t_theirs = theirs(), _best_time(theirs, repeats)
            row[2:2] = [f"{t_theirs:.2f}", f"{t_theirs / t_ours:.1f}x"]
            row.append(f"{reference:.6f} (diff {abs(value - reference):.1e})")
        rows.append(row)
    header = ["metric", "hand-written, s", "hand-written value"]
    if oracles:
        header = ["metric", "hand-written, s", f"{oracle_name}, s", "speed-up", "hand-written value", f"{oracle_name} value"]
    note = (f"{masks.size / 1e6:.1f}M float32 scores ({n} maps of {side}x{side}, {int(masks.sum())} anomalous "
            f"pixels in {metrics.connected_components(masks)[1]} regions); best of {repeats} after a warm-up.")
    return markdown_table(header, rows) + "\n\n" + note


# --------------------------------------------------------------------------------------------------


def report(only=("inference", "training", "metrics"), batch: int = 8, repeats: int = 3, pixels: int = 10_000_000,
           device="cpu", **options):
    """Print the chosen tables for a model built from UniAD `options` (default: the default model), its plain
    and its fast path side by side. only: any of "attention", "export" (ONNX Runtime / OpenVINO), "inference", "training", "profile" (training with the FLOP
    check, the matmul peak and the op tables), "metrics"."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s), "
          f"load average {load:.1f} at the start, device {device}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    start = time.perf_counter()
    torch.manual_seed(0)  # the random inputs
    on = f"batch {batch}, {torch.get_num_threads()} thread(s)"
    if "attention" in only:
        print(f"### Attention backends, {on}\n")
        print(attention(options, batch, repeats, device) + "\n", flush=True)
    if "export" in only:
        print(f"### Exported graphs against eager PyTorch, {torch.get_num_threads()} thread(s)\n")
        print(exported(options, (1, batch), repeats) + "\n", flush=True)
    if "inference" in only:
        print(f"### Inference, {on}\n")
        print(inference(options, batch, repeats, device) + "\n", flush=True)
    if "training" in only or "profile" in only:
        print(f"### Training, {on}\n")
        print(training(options, batch, repeats, device, profile="profile" in only) + "\n", flush=True)
    if "metrics" in only:
        print("### Metrics on every pixel\n")
        print(metric_speed(int(pixels), repeats) + "\n", flush=True)
        print("Side by side with scikit-learn (a test oracle, so not imported here): "
              "`python docs/scripts/metric_speed_vs_sklearn.py`.\n")
    print(f"total {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f} at the end")
