"""The reconstruction transformer (uniad_mini/transformer.py, paper Sec. 3.2-3.4): layer-wise queries, positions,
feature jitter, and what the neighbor mask keeps a token from reading."""
import torch

from uniad_mini.config import make_config
from uniad_mini.model import build_transformer
from uniad_mini.neighbors import neighbor_mask
from uniad_mini.transformer import EncoderLayer, PositionEmbedding, feature_jitter


def small(channels: int, grid, **options):
    """A small reconstruction transformer: the default recipe's switches, width 16, 2 heads, 1 + 1 layers."""
    return build_transformer(make_config(**{"hidden_dim": 16, "heads": 2, "layers": 1, "ffn_dim": 16,
                                            "dropout": 0.0, **options}), channels, grid)


def trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_each_decoder_layer_owns_a_query_table_and_the_switch_shares_one():
    paper = lambda **kw: build_transformer(make_config(recipe="paper", **kw), 192, (14, 14))  # noqa: E731
    assert len(paper().queries) == 4
    shared = paper(layerwise_query=False)
    assert len(shared.queries) == 1
    assert trainable(paper()) - trainable(shared) == 3 * 196 * 256


def test_position_embedding_is_concat_of_column_and_row_tables():
    pe = PositionEmbedding((3, 5), 8)
    pos = pe()
    assert pos.shape == (15, 8)
    i, j = 2, 4
    torch.testing.assert_close(pos[i * 5 + j], torch.cat([pe.col_embed[j], pe.row_embed[i]]))
    assert 0 <= pe.row_embed.min() and pe.row_embed.max() < 1


def test_jitter_is_off_in_eval_and_on_in_training():
    net = small(16, (4, 4), ffn_dim=32, neighbor_size=3)
    x = torch.randn(2, 16, 16)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))
    net.jitter_scale = 0.0
    assert torch.equal(net(x), net(x))


def test_jitter_noise_has_std_alpha_norm_over_c():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64).repeat(1, 20000, 1)  # one token repeated: many noise samples
    noise = feature_jitter(x, scale=20.0) - x
    expected = 20.0 * x[0, 0].norm() / 64
    assert abs(noise.std().item() / expected.item() - 1) < 0.02


def test_an_encoder_layer_with_the_mask_reads_nothing_of_a_tokens_neighbours():
    """Layer 1 of the encoder: token i's output is a function of x_i (the residual) and the tokens outside its
    3 x 3 window only; a change inside the window (i excepted) leaves it exactly as it was."""
    torch.manual_seed(0)
    layer = EncoderLayer(16, 2, 32, 0.0, "torch").eval()
    grid, i = (5, 6), 14  # token (2, 2)
    pos = torch.randn(30, 16)
    x = torch.randn(1, 30, 16)
    window = neighbor_mask(*grid, 3)[i].nonzero().flatten().tolist()  # the 9 tokens i may not read, i among them
    inside = [j for j in window if j != i]
    outside = next(j for j in range(30) if j not in window)
    masked = dict(grid=grid, window=3)

    def changed(j, **mask):
        y = x.clone()
        y[0, j] += torch.randn(16)
        return layer(y, pos, mask)[0, i] - layer(x, pos, mask)[0, i]

    with torch.no_grad():
        assert all(changed(j, **masked).abs().max() == 0 for j in inside)
        assert changed(outside, **masked).abs().max() > 1e-3  # it does read the others
        assert changed(i, **masked).abs().max() > 1e-3  # and itself, through the residual
        assert all(changed(j).abs().max() > 1e-3 for j in inside)  # without the mask it reads its neighbours
