"""The one training loop (paper Sec. 4.1, "Implementation details"): reconstruct normal features, MSE to themselves.

    for every epoch, for every batch x of standardised normal feature grids (B, C, h, w):
        loss = MSE(reconstructor(x), x)          # the target is the clean x: jitter happens inside the model
        AdamW (or Adam) step, gradient-norm clip, learning rate from the schedule

Every reconstructor in the project -- UniAD's transformer, the MLP / CNN / attention of the identical-shortcut
experiments -- maps grids (B, C, h, w) to grids of the same shape and is trained here, with the settings
passed explicitly (`TrainSettings`). The loop keeps its state (epoch, optimizer, RNG, loss history) in a
plain dict so that a checkpoint can resume it exactly; it draws its random numbers (batch order, jitter,
dropout) inside `torch.random.fork_rng`, so the caller's global RNG is left as it was.

Several processes (torchrun, see distributed.py and docs/distributed.md) run this same loop. Every rank holds
the full feature set and computes the same batch order; at each step rank r takes its slice of the global
batch, its loss weighted by its share, and DistributedDataParallel averages the gradients:

    (1/W) sum_r grad(MSE_r * n_r W / n) = grad(sum_r n_r MSE_r / n) = grad(MSE of the global batch of n)

so clipping, the optimizer step and the schedule see what a single process with the same `batch_size` sees.
With one process none of this runs: the loop is the plain one above.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .errors import OptionError
from .progress import Progress

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainSettings:
    """What the loop needs, every field given by the caller: `model.train_settings(Config)` for UniAD (the
    one place of the defaults), `shortcut.experiments` for the notebooks' own runs."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    grad_clip: float  # max gradient norm; 0: no clipping
    schedule: str  # "cosine" | "step" (x0.1 at 80%) | "constant"
    warmup: float  # fraction of all steps with a linear warm-up
    optimizer: str  # "adamw" | "adam" | "sgd" (plain gradient descent, no momentum)
    precision: str  # "fp32" | "bf16" (matmuls under bf16 autocast) | "auto" (bf16 where native)
    seed: int
    fast: bool  # one fused optimizer kernel and one foreach clipping call (the same math); False: the plain loop
    compile: bool  # torch.compile the model for the steps (`Compiled`; eager without a C++ compiler)

    def check(self) -> "TrainSettings":
        if self.schedule not in SCHEDULES:
            raise OptionError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise OptionError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise OptionError("epochs and batch_size must be at least 1")
        if self.precision not in PRECISIONS:
            raise OptionError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.lr <= 0 or not 0 <= self.warmup < 1:
            raise OptionError("lr must be positive and warmup a fraction in [0, 1)")
        return self


def learning_rate(s: TrainSettings, step: int, total: int) -> float:
    """The learning rate at optimizer step `step` of `total`: linear warm-up, then the schedule."""
    warm = int(s.warmup * total)
    if step < warm:
        return s.lr * (step + 1) / warm
    if s.schedule == "cosine":
        return s.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    if s.schedule == "step":
        return s.lr * (0.1 if step >= 0.8 * total else 1.0)
    return s.lr


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matrix products run in hardware: a CUDA GPU that has them, or an x86 CPU with AMX or
    AVX512-BF16 (read from /proc/cpuinfo on Linux). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where `native_bf16`, else "fp32"; the others as they are."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def make_optimizer(params, s: TrainSettings) -> torch.optim.Optimizer:
    """The optimizer of the settings; `s.fast`: all parameters in one fused kernel (foreach where the device or
    the torch version has no fused kernel), the same update within float rounding."""
    params = list(params)
    speed = dict(foreach=True) if s.fast else {}
    if s.optimizer == "sgd":  # W <- W - lr * grad: the dynamics of the linear derivation (notebook 02)
        return torch.optim.SGD(params, lr=s.lr, weight_decay=s.weight_decay, **speed)
    cls = torch.optim.Adam if s.optimizer == "adam" else torch.optim.AdamW
    if s.fast:
        try:
            return cls(params, lr=s.lr, weight_decay=s.weight_decay, fused=True)
        except (RuntimeError, ValueError):  # an older torch or a device without the fused kernel
            pass
    return cls(params, lr=s.lr, weight_decay=s.weight_decay, **speed)


def batch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample order of one epoch, a function of (seed, epoch) only: a resumed epoch replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _get_rng(device: torch.device) -> dict:
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng(rng, device: torch.device):
    if isinstance(rng, torch.Tensor):  # the CPU state alone
        rng = {"cpu": rng}
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def local_slice(batch: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, float]:
    """Rank `rank`'s part of a global batch of sample indices, and the weight of its loss (see the docstring).

    The parts differ in size by at most one. A rank left without samples (a last batch smaller than the
    number of ranks) still has to join the gradient average: it computes one sample and weighs it 0.
    """
    if world == 1:
        return batch, 1.0
    part = batch.tensor_split(world)[rank]
    if len(part) == 0:
        return batch[:1], 0.0
    return part, len(part) * world / len(batch)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, grad_clip: float,
               weight: float = 1.0, precision: str = "fp32", foreach: bool | None = None) -> torch.Tensor:
    """One optimizer step on a batch x (B, C, h, w); returns the (weighted) loss as a tensor (no host sync).

    The project's one training step: UniAD, the baselines and the experiments all train through it.
    foreach=True clips the gradients' norm in one call over all of them (the fast path); None: torch's default.

    precision "bf16": the forward runs under autocast, so matrix products take bf16 inputs (fp32 sums),
    while weights, optimizer state, softmax, LayerNorm and the loss stay fp32 (autocast's own lists).
    On a CPU with AMX this halves a step of the default model; evaluation always runs in fp32.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(x)  # (B, C, h, w): in training mode the model jitters its own input
    ### HINT: the model must learn to give back the normal features it was shown, not the noise it met on the way;
    ### HINT: then one step of the optimizer, with the gradient's norm kept within grad_clip (0: no clipping).
    ### BEGIN SOLUTION
    loss = F.mse_loss(out.float(), x) * weight  # weight 1.0 in a single process: x * 1.0 is exact
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=foreach)
    opt.step()
    return loss.detach()
    ### END SOLUTION


def train(model: nn.Module, feats: torch.Tensor, settings: TrainSettings, state: dict | None = None,
          progress: bool = True, callback=None) -> dict:
    """Train `model` (grids (B, C, h, w) -> same) to reconstruct `feats` (N, C, h, w); returns the state.

    state: {"epoch", "history", "optimizer", "rng"} of an earlier call to continue from (it is updated in
    place), or None to start afresh from `settings.seed`. The loop runs until epoch `settings.epochs`.
    callback(model, epoch, loss, state) runs after every epoch, in train mode; it may save a checkpoint.
    The model is left in eval mode.

    Under torchrun every rank calls this with the same `feats` and `settings`; the callback runs on every
    rank (write files from `distributed.is_main()` only), the progress bar on rank 0 only. Each rank seeds
    its jitter / dropout noise with `settings.seed + rank`, and the state keeps every rank's RNG state
    ("rng_per_rank"), so a resumed run with the same number of processes continues exactly.
    """
    s = settings.check()
    state = state if state is not None else {}
    state.setdefault("epoch", 0)
    state.setdefault("history", [])
    device = next(model.parameters()).device
    feats = feats.to(device)
    opt = make_optimizer(model.parameters(), s)
    precision = state.setdefault("precision", resolve_precision(s.precision, device))  # a resume keeps its own
    rank, world = distributed.rank(), distributed.world_size()
    net = model  # what the steps call: the model itself, or its DistributedDataParallel wrapper
    if world > 1:
        distributed.check_same_everywhere(feats)
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    elif s.compile:  # compiled in the first step (and once more for a smaller last batch): once per run
        net = Compiled(model)
    with torch.random.fork_rng(devices=_rng_devices(device)):
        _start_noise(state, opt, s.seed, rank, world, device)
        model.train()
        for epoch in range(state["epoch"], s.epochs):
            loss = _epoch(net, opt, feats, s, epoch, precision, progress and rank == 0)
            state.update(epoch=epoch + 1, optimizer=opt.state_dict(), rng=_get_rng(device))
            if world > 1:  # rank 0 writes the checkpoint: it carries every rank's noise state
                state["rng_per_rank"] = distributed.gather_objects(state["rng"])
            else:
                state.pop("rng_per_rank", None)
            state["history"].append(loss)
            if callback is not None:
                callback(model, epoch + 1, loss, state)
                model.train()
    if isinstance(net, Compiled) and progress and rank == 0 and net.compiled is not None:
        print(f"torch.compile: {net.compile_seconds:.0f} s of the training went to compiling (the first step of "
              "each batch shape)", file=sys.stderr)
    model.eval()
    return state


def _start_noise(state: dict, opt, seed: int, rank: int, world: int, device: torch.device) -> None:
    """Seed the jitter / dropout noise for a fresh run, or restore the optimizer and noise of a resumed one."""
    if state["epoch"] == 0:
        torch.manual_seed(seed + rank)  # jitter noise and dropout follow the seed (and the rank)
        return
    opt.load_state_dict(state["optimizer"])  # resume exactly where the state stopped
    rngs = state.get("rng_per_rank") or [state["rng"]]
    if len(rngs) == world:
        _set_rng(rngs[rank], device)
    elif rank == 0:  # another number of processes than the checkpoint's: rank 0 continues its stream,
        _set_rng(state["rng"], device)
    else:  # the others start afresh (batches and schedule are unaffected; the noise is not replayed)
        torch.manual_seed(seed + rank)


def _epoch(net: nn.Module, opt, feats: torch.Tensor, s: TrainSettings, epoch: int, precision: str,
           progress: bool) -> float:
    """One pass over `feats` (N, C, h, w) in `batch_order`; the mean loss of the global batches."""
    rank, world = distributed.rank(), distributed.world_size()
    N = feats.shape[0]
    steps = math.ceil(N / s.batch_size)
    order = batch_order(N, s.seed, epoch).to(feats.device)
    running = torch.zeros((), device=feats.device)
    with Progress(steps, f"epoch {epoch + 1}/{s.epochs}", enabled=progress) as bar:
        for i in range(steps):
            for group in opt.param_groups:
                group["lr"] = learning_rate(s, epoch * steps + i, s.epochs * steps)
            batch, weight = local_slice(order[i * s.batch_size : (i + 1) * s.batch_size], rank, world)
            x = feats[batch]  # (B, C, h, w); with W ranks about B / W of the global batch
            running += train_step(net, opt, x, s.grad_clip, weight, precision, foreach=True if s.fast else None)
            bar.update(1)
        if world > 1:  # the mean over ranks of the weighted losses is the global-batch loss
            torch.distributed.all_reduce(running)
            running /= world
        loss = running.item() / steps  # one host sync per epoch
        bar.update(0, f"loss {loss:.4f}")
    return loss


# ---- compilation (Config.compile, off by default: no gain measured, docs/performance.md) ----
def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU inductor would call ($CXX, else g++ / clang++ / c++), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Compiled:
    """`module` compiled with torch.compile, falling back to `module` itself (with one line) when it cannot be.

    Called like `module`; `parameters()` are `module`'s own, so saving, loading and evaluating `module` is
    unaffected. Compilation happens on the first call and again for each new input shape (a smaller last
    batch) or mode; `compile_seconds` adds up those calls, to be reported apart from the steps.
    """

    def __init__(self, module: nn.Module, say=None):
        self.module, self.say = module, say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.compiled, self.compile_seconds, self._seen = None, 0.0, set()
        if cxx_compiler() is None:
            self.say("torch.compile: no C++ compiler (g++, clang++ or $CXX) found; running eager")
        else:
            self.compiled = torch.compile(module, dynamic=False)

    def parameters(self):
        return self.module.parameters()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.module(x)
        key = (tuple(x.shape), x.dtype, torch.is_autocast_enabled(x.device.type), self.module.training)
        if key in self._seen:
            return self.compiled(x)
        start = time.perf_counter()
        try:
            y = self.compiled(x)
        except Exception as e:  # noqa: BLE001 -- any compiler failure: said once, eager from then on
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self.say(f"torch.compile failed ({type(e).__name__}: {first[:200]}); running eager")
            self.compiled = None
            return self.module(x)
        self._seen.add(key)
        self.compile_seconds += time.perf_counter() - start
        return y
