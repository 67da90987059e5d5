"""The reconstruction transformer (paper Sec. 3.2-3.4, Fig. 3): it rebuilds every feature token from the others.

    feature tokens (B, N, C) --[feature jitter, training only]--> input proj C->D
        -> encoder  x L  (neighbor-masked self-attention, FFN; post-norm)
        -> decoder  x L  (layer-wise learned query q_l attends to the encoder output, then to the previous
                          decoder output; FFN; post-norm), final LayerNorm
        -> output proj D->C -> reconstruction (B, N, C)

The three ideas of the paper, each behind one switch so an ablation is one argument:
  * layer-wise query embedding (Sec. 3.2): every decoder layer owns a learned query table (N, D);
    `layerwise_query=False` gives a single table, fed to the first decoder layer only: every later layer
    starts from the previous layer's output instead (as in DETR).
  * neighbor-masked attention (Sec. 3.3): `neighbor_size=None` turns the mask off.
  * feature jittering (Sec. 3.4): `jitter_scale=0` turns it off.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import MultiHeadAttention
from .neighbors import check_grid_window


def feature_jitter(x: torch.Tensor, scale: float, prob: float = 1.0) -> torch.Tensor:
    """x + eps, eps ~ N(0, (scale * ||x|| / C)^2) per token, for tokens x (B, N, C) (paper Eq. 4)."""
    ### HINT: Eq. 4: Gaussian noise whose size follows each token's own norm (and the scale, over the width C);
    ### HINT: switched off, or skipped by chance for a whole batch, the very same tensor comes back.
    ### BEGIN SOLUTION
    if scale <= 0 or prob <= 0 or (prob < 1 and torch.rand(()) >= prob):
        return x
    sigma = scale * x.norm(dim=-1, keepdim=True) / x.shape[-1]  # (B, N, 1)
    return x + torch.randn_like(x) * sigma
    ### END SOLUTION


class PositionEmbedding(nn.Module):
    """Learned 2-D position embedding: pos(i, j) = concat(col[j], row[i]), tables initialised U[0, 1)."""

    def __init__(self, grid: tuple[int, int], dim: int):
        super().__init__()
        self.grid = grid
        self.row_embed = nn.Parameter(torch.rand(grid[0], dim // 2))  # (H, D/2)
        self.col_embed = nn.Parameter(torch.rand(grid[1], dim - dim // 2))  # (W, D/2)

    def forward(self) -> torch.Tensor:  # -> (N, D), tokens row-major
        H, W = self.grid
        col = self.col_embed[None, :, :].expand(H, W, -1)  # (H, W, D/2)
        row = self.row_embed[:, None, :].expand(H, W, -1)  # (H, W, D/2)
        return torch.cat([col, row], dim=-1).reshape(H * W, -1)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))


class EncoderLayer(nn.Module):
    """x = LN(x + Attn(q=x+pos, k=x+pos, v=x)); x = LN(x + FFN(x))."""

    def __init__(self, dim, heads, ffn, dropout, backend):
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads, dropout, backend)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, pos, mask_args):  # x (B, N, D), pos (N, D)
        ### HINT: two sub-blocks, each "add what the sub-block computes to its input, then normalise"; positions tell
        ### HINT: the attention where a token is (they shape who looks at whom), not what it carries; the mask applies.
        ### BEGIN SOLUTION
        x = self.norm1(x + self.drop(self.attn(x + pos, x + pos, x, **mask_args)))
        return self.norm2(x + self.ffn(x))
        ### END SOLUTION


class DecoderLayer(nn.Module):
    """Starts from a query t (its own learned table, or the previous layer's output without layer-wise queries):

    t = LN(t + Attn(q=t+pos, k=enc+pos, v=enc))         -- look at the encoded image
    t = LN(t + Attn(q=t+pos, k=prev+pos, v=prev))       -- look at the previous decoder output (enc for layer 1)
    t = LN(t + FFN(t))
    """

    def __init__(self, dim, heads, ffn, dropout, backend):
        super().__init__()
        self.attn1 = MultiHeadAttention(dim, heads, dropout, backend)
        self.attn2 = MultiHeadAttention(dim, heads, dropout, backend)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, t, enc, prev, pos, mask_args):  # all (B, N, D) but pos (N, D)
        ### HINT: three sub-blocks as in the encoder layer; the query t asks, the encoded image answers first, then
        ### HINT: the previous decoder output; every attention keeps the neighbor mask (a token never reads itself).
        ### BEGIN SOLUTION
        t = self.norm1(t + self.drop1(self.attn1(t + pos, enc + pos, enc, **mask_args)))
        t = self.norm2(t + self.drop2(self.attn2(t + pos, prev + pos, prev, **mask_args)))
        return self.norm3(t + self.ffn(t))
        ### END SOLUTION


class ReconstructionTransformer(nn.Module):
    """Tokens (B, N, C) -> reconstructed tokens (B, N, C) (paper Sec. 3.2-3.4, Fig. 2)."""

    def __init__(
        self,
        channels: int,  # C, the stacked backbone channels
        *,  # every size and switch is given: `model.build_transformer(Config, ...)` holds the defaults
        grid: tuple[int, int],  # (H, W) of the feature grid, N = H * W tokens
        dim: int,  # D, the transformer width
        heads: int,
        layers: int,  # encoder layers, and as many decoder layers
        ffn: int,
        dropout: float,
        neighbor_size: int | tuple[int, int] | None,  # the neighbor mask's window; None: no mask
        layerwise_query: bool,  # one learned query table per decoder layer (else one shared table)
        jitter_scale: float,  # alpha of the feature jitter; 0: none
        jitter_prob: float,
        backend: str,  # attention: "auto" | "torch" | "sdpa" | "triton" (attention.BACKENDS)
    ):
        super().__init__()
        if neighbor_size is not None:
            check_grid_window(grid[0], grid[1], neighbor_size)
        self.grid, self.neighbor_size = tuple(grid), neighbor_size
        self.layerwise_query, self.jitter_scale, self.jitter_prob = layerwise_query, jitter_scale, jitter_prob
        N = grid[0] * grid[1]
        self.input_proj = nn.Linear(channels, dim)
        self.output_proj = nn.Linear(dim, channels)
        self.pos = PositionEmbedding(self.grid, dim)
        self.encoder = nn.ModuleList(EncoderLayer(dim, heads, ffn, dropout, backend) for _ in range(layers))
        self.decoder = nn.ModuleList(DecoderLayer(dim, heads, ffn, dropout, backend) for _ in range(layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.queries = nn.ParameterList(nn.Parameter(torch.empty(N, dim)) for _ in range(layers if layerwise_query else 1))
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for q in self.queries:
            nn.init.normal_(q)  # N(0, 1), as nn.Embedding

    def jitter_in_training(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, C)
        """What the encoder reads: the jittered tokens in training mode (Sec. 3.4), the tokens themselves in eval."""
        ### HINT: the noise is a training device only: a model that scores test images must see them as they are.
        ### BEGIN SOLUTION
        if self.training:
            return feature_jitter(tokens, self.jitter_scale, self.jitter_prob)
        return tokens
        ### END SOLUTION

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, C)
        x = self.input_proj(self.jitter_in_training(tokens))  # (B, N, D)
        pos = self.pos()  # (N, D)
        mask_args = {"grid": self.grid, "window": self.neighbor_size} if self.neighbor_size is not None else {}
        enc = x
        for layer in self.encoder:
            enc = layer(enc, pos, mask_args)
        prev = enc
        for l, layer in enumerate(self.decoder):
            ### HINT: with layer-wise queries each decoder layer starts from a learned table of its own, the same for
            ### HINT: every image; without them only the first layer does, and each later one continues the last.
            ### BEGIN SOLUTION
            if self.layerwise_query:
                t = self.queries[l].expand(x.shape[0], -1, -1)  # q_l (B, N, D)
            else:  # one query table, then each layer continues from the previous output
                t = self.queries[0].expand(x.shape[0], -1, -1) if l == 0 else prev
            ### END SOLUTION
            prev = layer(t, enc, prev, pos, mask_args)
        return self.output_proj(self.decoder_norm(prev))  # (B, N, C)


class OnTokens(nn.Module):
    """Wrap a token model (B, N, C) -> (B, N, C) so that it takes and returns grids (B, C, h, w)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):  # (B, C, h, w)
        y = self.module(x.flatten(2).transpose(1, 2))  # (B, N, C), tokens row-major
        return y.transpose(1, 2).reshape(x.shape)
