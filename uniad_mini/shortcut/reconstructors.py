"""Reconstructors: every model that rebuilds feature grids (B, C, h, w) -> (B, C, h, w) (paper Sec. 3.1, Fig. 5a).

The paper's Sec. 3.1 asks which reconstructors learn the "identical shortcut" (copying their input, anomalies
included); these are the ones it compares. The one training loop (`training.train`) and the one scorer
(`scoring.score`) take any of them:

    OnTokens(m)        (from `transformer.py`) wraps a token model (B, N, C) -> (B, N, C)
    MLP, CNN           per-token layers / k x k convolutions; one layer is y = W x + b / y = K * x (CNN lives in
                       the core's `baselines.py`, beside the nearest-token bank: the benchmarks' baselines)
    QueryAttention     y = softmax(q x^T / sqrt(C)) x with a learned query q and no other weights
    MaskedQueryLayer   one neighbor-masked attention layer with a learned query: x_i cannot reach y_i
    relu_identity(m)   sets an MLP / CNN (hidden width >= C) to the identity on inputs bounded by B:
                       ReLU(x + B) in the first layer, ReLU(h) = h in the middle, minus B in the last

`build(name, C, grid, size)` makes the reconstructors of Fig. 5a by name:

    build("linear")       MLP(C, layers=1), the layer y = W x + b, from W = 0
    build("mlp")          C -> 256 -> 256 -> C, ReLU, per token
    build("cnn3x3")       the same with 3 x 3 convolutions, as wide (256 >= C: it can hold the identity, see
                          relu_identity); build("conv3x3"): one 3 x 3 conv
    build("attention")    QueryAttention, the formula above and nothing else
    build("transformer")  `ReconstructionTransformer` with UniAD's three switches off; build("uniad"): on
    build("transformer-wide"), build("uniad-wide")
                          the same at size "wide" (`transformer_size`): at least C + 2 wide, so that the
                          bottleneck of the narrower sizes (a width D < C caps ||J_ii - I|| / ||I|| at no less
                          than sqrt(1 - D/C), `identity.rank_bound`) does not rule out a copy
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..attention import MultiHeadAttention
from ..baselines import CNN, cnn3x3  # the CNN of Fig. 5a is also the benchmarks' baseline: one copy, in the core
from ..config import make_config
from ..transformer import OnTokens, ReconstructionTransformer


class MLP(nn.Module):
    """A per-token MLP; `layers=1` is the fully connected layer y = W x + b of the derivation."""

    def __init__(self, channels: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        widths = [channels] + [hidden] * (layers - 1) + [channels]
        mods = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mods += [nn.Linear(a, b)] + ([nn.ReLU()] if i < layers - 1 else [])
        self.net = nn.Sequential(*mods)

    def forward(self, x):  # (B, C, h, w)
        return self.net(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # tokens last, then back


class QueryAttention(nn.Module):
    """y = softmax(q x^T / sqrt(C)) x with one learned query per grid position, q (N, C); no other weights."""

    def __init__(self, channels: int, grid: tuple[int, int] = (14, 14)):
        super().__init__()
        self.grid = tuple(grid)
        self.query = nn.Parameter(torch.randn(grid[0] * grid[1], channels))  # q (N, C)

    def attention(self, x):  # (B, C, h, w) -> attention maps (B, N, N): row = query position, column = key
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        return (self.query @ tokens.transpose(1, 2) / math.sqrt(x.shape[1])).softmax(dim=-1)

    def forward(self, x):  # (B, C, h, w)
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        y = self.attention(x) @ tokens  # (B, N, C)
        return y.transpose(1, 2).reshape(x.shape)


class MaskedQueryLayer(nn.Module):
    """y = out(Attn(q, k = v = in(x)) with a learned query table q (N, D) and the neighbor mask: one decoder
    attention of UniAD alone. Nothing at position i reaches y_i (its key is blocked, the query is fixed), so
    dy_i / dx_i = 0 exactly: the one-layer guarantee of the mask."""

    def __init__(self, channels: int, grid=(14, 14), dim: int = 32, heads: int = 2, window: int = 7):
        super().__init__()
        self.grid, self.window = tuple(grid), window
        self.inp, self.out = nn.Linear(channels, dim), nn.Linear(dim, channels)
        self.query = nn.Parameter(torch.randn(grid[0] * grid[1], dim))  # q (N, D)
        self.attn = MultiHeadAttention(dim, heads, backend="torch")

    def forward(self, x):  # (B, C, h, w)
        t = self.inp(x.flatten(2).transpose(1, 2))  # (B, N, D)
        y = self.attn(self.query.expand(len(t), -1, -1), t, t, grid=self.grid, window=self.window)  # (B, N, D)
        return self.out(y).transpose(1, 2).reshape(x.shape)


@torch.no_grad()
def relu_identity(model: nn.Module, bound: float) -> nn.Module:
    """Set an MLP or CNN to the identity on inputs with every x_c >= -bound, and return it:

        first layer  h = ReLU([I; 0] x + B)   (x + B >= 0 when x >= -B, so ReLU changes nothing)
        middle       h = ReLU(I h)            (h >= 0 already)
        last         y = [I 0] h - B  = x     (delta kernels for convolutions: I at the centre tap)

    Only a lower bound is needed: a channel below -B comes out as -B (clipped), one above +B is copied.
    Exact up to the rounding of x + B - B. Needs every hidden layer at least C wide: a narrower one is a
    bottleneck that no setting of the weights turns into a copy of every input."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    C = layers[0].weight.shape[1]
    if min(m.weight.shape[0] for m in layers[:-1]) < C:
        raise ValueError(f"a hidden layer narrower than C = {C} channels cannot copy: no identity to set")
    for n, m in enumerate(layers):
        out, inp = m.weight.shape[:2]
        eye = torch.eye(out, inp)  # I on the first min(out, inp) channels, 0 elsewhere
        m.weight.zero_()
        if m.weight.dim() == 4:
            k = m.weight.shape[-1] // 2
            m.weight[:, :, k, k] = eye
        else:
            m.weight.copy_(eye)
        m.bias.fill_(bound if n == 0 else -bound if n == len(layers) - 1 else 0.0)
    return model


def transformer(channels: int, grid, dim: int, heads: int, layers: int, ffn: int,
                neighbor_size=None, layerwise_query: bool = False, jitter_scale: float = 0.0) -> OnTokens:
    """`ReconstructionTransformer` on grids, no dropout, the plain attention path; the three UniAD switches
    off unless given (a plain transformer whose decoder starts from one learned query table)."""
    return OnTokens(ReconstructionTransformer(
        channels, grid=tuple(grid), dim=dim, heads=heads, layers=layers, ffn=ffn, dropout=0.0,
        neighbor_size=neighbor_size, layerwise_query=layerwise_query, jitter_scale=jitter_scale, jitter_prob=1.0,
        backend="torch"))


def zero_init(model: nn.Module) -> nn.Module:
    """Set every weight and bias to zero (for one-layer models: the start y = 0 of the derivation)."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


# The reconstructors of Fig. 5a, by name. `size` picks the transformers' width and depth: "paper" is UniAD's,
# "small" trains in seconds per epoch on a CPU, "tiny" is for the fast notebook setting and the tests; "wide"
# (`transformer_size`) is "small" at a width of at least C + 2, wide enough to copy.
_PAPER = make_config(recipe="paper")
TRANSFORMER_SIZES = {
    "paper": dict(dim=_PAPER.hidden_dim, heads=_PAPER.heads, layers=_PAPER.layers, ffn=_PAPER.ffn_dim),
    "small": dict(dim=96, heads=4, layers=2, ffn=192),
    "tiny": dict(dim=32, heads=2, layers=2, ffn=64),
}
UNIAD_SWITCHES = dict(neighbor_size=_PAPER.neighbor_size, layerwise_query=_PAPER.layerwise_query,
                      jitter_scale=_PAPER.jitter_scale)
NAMES = ("linear", "mlp", "cnn1x1", "cnn3x3", "conv3x3", "attention", "transformer", "uniad", "transformer-wide",
         "uniad-wide")
WIDE = "-wide"  # a transformer name with this suffix is built at size "wide"


def transformer_size(size: str, channels: int) -> dict:
    """The transformers' width and depth, {"dim", "heads", "layers", "ffn"}: `TRANSFORMER_SIZES[size]`, or for
    "wide" the "small" depth at a width of at least C + 2 (a multiple of 8; 200 for C = 192). Every token enters
    through input_proj (C -> D) and leaves through output_proj (D -> C), so J_ii has rank at most D, and the
    last LayerNorm takes out the token's mean direction (and nearly its own): C + 2 leaves room for rank C."""
    if size == "wide":
        dim = 8 * -(-(channels + 2) // 8)
        return dict(TRANSFORMER_SIZES["small"], dim=dim, ffn=2 * dim)
    if size not in TRANSFORMER_SIZES:
        raise ValueError(f"unknown transformer size {size!r}; choose one of {sorted(TRANSFORMER_SIZES) + ['wide']}")
    return dict(TRANSFORMER_SIZES[size])


def build(name: str, channels: int, grid=(14, 14), size: str = "small") -> nn.Module:
    """A reconstructor by name:

    linear       y = W x + b per token (zero at start)
    mlp          C -> 256 -> 256 -> C, ReLU, per token
    cnn1x1       the mlp as 1 x 1 convolutions, max(256, C) wide
    cnn3x3       the same with 3 x 3 convolutions (at least C wide: no bottleneck, `relu_identity` can set it to a copy)
    conv3x3      one 3 x 3 convolution C -> C (zero at start)
    attention    y = softmax(q x^T / sqrt(C)) x         transformer / uniad   `ReconstructionTransformer`
                                                        with UniAD's three switches off / on, at `size`
    transformer-wide / uniad-wide                       the same at size "wide" (`transformer_size`)
    """
    if name == "linear":  # starts from W = 0, b = 0, the map that reconstructs nothing: every step toward I is learned
        return zero_init(MLP(channels, layers=1))
    if name == "mlp":
        return MLP(channels)
    if name == "cnn1x1":
        return CNN(channels, kernel=1, hidden=max(256, channels))
    if name == "cnn3x3":
        return cnn3x3(channels)
    if name == "conv3x3":  # from K = 0 too
        return zero_init(CNN(channels, kernel=3, layers=1))
    if name == "attention":
        return QueryAttention(channels, grid)
    if name in ("transformer" + WIDE, "uniad" + WIDE):
        name, size = name[: -len(WIDE)], "wide"
    if name == "transformer":
        return transformer(channels, grid, **transformer_size(size, channels))
    if name == "uniad":
        return transformer(channels, grid, **transformer_size(size, channels), **UNIAD_SWITCHES)
    raise ValueError(f"unknown reconstructor {name!r}; choose one of {NAMES}")
