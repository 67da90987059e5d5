"""Checkpoints: a trained UniAD as a file, and back (none of the paper; portable by design).

A checkpoint holds what the model *is* and where its training stands, nothing about how it was run:

    format          CHECKPOINT_FORMAT, the version of this layout
    config          the architecture, scoring and training options (`config.saved`: no run-time choice)
    transformer     the reconstruction transformer's weights (the backbone's are the shipped ImageNet ones)
    feature_mean    per-channel statistics of the training features (C,)
    feature_std
    train_state     {"epoch", "history", "optimizer", "rng", "precision"}: `fit` resumes it exactly
    calibration     the thresholds of `UniAD.calibrate`, when set

The attention backend, the fast path and compilation are chosen when a model is loaded
(`UniAD.load(path, backend=..., device=...)`), so a model trained with the Triton kernel on a GPU scores on a
CPU. Older formats load as well: format 1 and 2 stored those choices in their config, and they are ignored.
Everything is tensors and plain data: `torch.load(weights_only=True)` reads it, and refuses anything else.
"""
from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import torch

from . import distributed
from .config import RUNTIME, Config, saved
from .errors import DataError

CHECKPOINT_FORMAT = 3  # 1: no "format" key; 2: adds it; 3: run-time choices no longer stored
CHECKPOINT_KEYS = {"config", "transformer", "feature_mean", "feature_std", "train_state"}


def save(model, path) -> None:
    """Write `model` to `path` via a temporary file and a rename: an interrupted save never leaves half a
    checkpoint. Under torchrun only rank 0 writes (the ranks hold the same weights)."""
    if not distributed.is_main():
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save({"format": CHECKPOINT_FORMAT, "config": saved(model.config),
                    "transformer": model.transformer.state_dict(),
                    "feature_mean": model.feature_mean.cpu(), "feature_std": model.feature_std.cpu(),
                    "train_state": model.train_state,
                    **({"calibration": model.calibration} if model.calibration is not None else {})}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(cls, path, map_location="cpu", **runtime):
    """A `cls` (UniAD) rebuilt from `path`, with the run-time choices `runtime` (backend, fast, compile; the
    defaults where not given). A DataError with one line for a file that is not a readable checkpoint."""
    unknown = sorted(set(runtime) - set(RUNTIME))
    if unknown:
        raise TypeError(f"UniAD.load takes the run-time choices {list(RUNTIME)}, not {unknown}: the other "
                        "options are the saved model's own")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except Exception as e:  # a truncated or foreign file, or a pickle that would run code
        raise DataError(unreadable(path, e)) from None
    missing = sorted(CHECKPOINT_KEYS - set(ckpt)) if isinstance(ckpt, dict) else sorted(CHECKPOINT_KEYS)
    if missing:
        raise DataError(f"{path} is not a uniad_mini checkpoint (no {'/'.join(missing)} entries)")
    version = ckpt.get("format", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise DataError(f"{path} has checkpoint format {version}; this uniad_mini reads up to "
                        f"{CHECKPOINT_FORMAT}: upgrade uniad_mini")
    architecture = {f.name for f in fields(Config)} - set(RUNTIME)  # formats 1-2 also stored run-time choices
    try:
        model = cls(**{k: v for k, v in ckpt["config"].items() if k in architecture}, **runtime)
    except (TypeError, ValueError) as e:  # a value this version refuses (a recipe, backbone... it lacks)
        raise DataError(f"{path} holds a config this uniad_mini cannot build: {e}") from None
    try:
        model.transformer.load_state_dict(ckpt["transformer"])
    except RuntimeError as e:
        raise DataError(f"{path} does not match its own config ({str(e).splitlines()[0]})") from None
    model.feature_mean.copy_(ckpt["feature_mean"])
    model.feature_std.copy_(ckpt["feature_std"])
    model.train_state = ckpt["train_state"]
    model.calibration = ckpt.get("calibration")
    return model.eval()


def unreadable(path, e: Exception) -> str:
    """One line on why torch.load(weights_only=True) refused `path`: code it would run, or not a checkpoint."""
    text = str(e)
    blocked = re.search(r"GLOBAL (\S+)", text)  # a pickle naming functions or classes beyond tensors and data
    if "Weights only load failed" in text and blocked:
        return (f"{path} asks to run code when loaded ({blocked.group(1)}); refused: uniad_mini checkpoints hold "
                f"tensors and plain data only (weights_only=True) -- do not load this file with torch.load either")
    lines = [line for line in text.splitlines() if line.strip()]
    if "Weights only load failed" in text:  # torch's own first line advises the unsafe way: show the cause
        lines = [line for line in lines if line.startswith(("Unsupported", "Unpickling", "invalid", "WeightsUnpickler"))
                 and not line.endswith(": ")] or ["unpickling failed"]
    cause = lines[0] if lines else ""
    return f"{path} is not a uniad_mini checkpoint, or it is truncated ({type(e).__name__}: {cause})"
