"""UniAD.forward as plain traceable graphs, for export (app/export.py) and its speed benchmark (bench/speed.py).

None of the paper beyond `model.py`'s path: the same math in eval mode, on square images, with nothing that
depends on the data (no input checks, the neighbor mask a constant), so that `torch.onnx.export` can trace it:

    Graph(model)                 images (B, 3, S, S) in [0, 1] -> scores (B,), maps (B, S, S), token errors (B, h, w)
                                 (maps and scores smoothed as the model smooths them: map_sigma; errors never)
    Graph(model, "backbone")     images -> standardised features f (B, C, h, w)
    Graph(model, "transformer")  f -> reconstruction f^ (B, C, h, w)

The backbone has each BatchNorm folded into its convolution (`backbone.fold_backbone`, as on the fast path: the
same function within float rounding, one op fewer per layer) and the transformer runs on the plain attention
path (backend "torch"; exported from SDPA instead it measured slower in both engines): every op has an ONNX
form. onnx is imported only by `write_onnx`.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn as nn

from .backbone import feature_stack, fold_backbone
from .features import standardize
from .model import build_transformer
from .scoring import scores_and_maps
from .transformer import OnTokens

OPSET = 17  # LayerNormalization is an ONNX op from opset 17 on
PARTS = {"whole": (["images"], ["scores", "maps", "errors"]), "backbone": (["images"], ["features"]),
         "transformer": (["features"], ["reconstruction"])}


class Graph(nn.Module):
    """UniAD.forward in eval mode on square images, as plain traceable ops (`part`: the whole path, or one stage
    of it; see the module docstring)."""

    def __init__(self, model, part: str = "whole"):
        super().__init__()
        self.part = part
        cfg = dataclasses.replace(model.config, backend="torch", fast=False)  # the plain attention path
        self.size, self.pool, self.sigma = cfg.image_size, cfg.score_pool, cfg.map_sigma
        self.backbone = fold_backbone(model.extractor.backbone, channels_last=False)  # BatchNorm in the convolutions
        self.transformer = build_transformer(cfg, model.channels, model.grid)
        self.transformer.load_state_dict(model.transformer.state_dict())
        self.register_buffer("mean", model.feature_mean.detach().clone())
        self.register_buffer("std", model.feature_std.detach().clone())
        self.eval().requires_grad_(False)

    def forward(self, x):
        if self.part == "transformer":
            return OnTokens(self.transformer)(x)  # f (B, C, h, w) -> f^ (B, C, h, w)
        f = standardize(feature_stack(self.backbone.tap_features(x)), self.mean, self.std)  # (B, C, h, w)
        if self.part == "backbone":
            return f
        f_hat = OnTokens(self.transformer)(f)  # (B, C, h, w)
        scores, maps = scores_and_maps(f_hat, f, (self.size, self.size), None, self.pool, self.sigma)
        errors = (f_hat - f).pow(2).sum(1).sqrt()  # (B, h, w): what scoring.anomaly_map upsamples
        return scores, maps, errors

    def example(self, batch: int = 2) -> torch.Tensor:
        """An input of the right shape for tracing: images, or features for the transformer stage."""
        g = torch.Generator().manual_seed(0)
        if self.part == "transformer":
            return torch.randn(batch, self.transformer.input_proj.in_features, *self.transformer.grid, generator=g)
        return torch.rand(batch, 3, self.size, self.size, generator=g)


def write_onnx(graph: Graph, path) -> None:
    """Trace `graph` into an ONNX file with a dynamic batch axis, and check the file with onnx's checker."""
    import onnx

    inputs, outputs = PARTS[graph.part]
    with warnings.catch_warnings():  # the tracer's notes on shapes read as Python numbers: S is fixed here
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (graph.example(),), str(path), input_names=inputs, output_names=outputs,
                          opset_version=OPSET, do_constant_folding=True,
                          dynamic_axes={name: {0: "batch"} for name in inputs + outputs}, dynamo=False)
    onnx.checker.check_model(str(path))
