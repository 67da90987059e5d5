"""Focused tests of the course's student parts (uniad_mini/commands/course.py ASSIGNMENTS): each test needs the one part
it grades and no other, so a student who finished one assignment gets its points whatever the others' state.

attend's tests take their neighbor mask from a loop here (not from neighbor_mask); the layer-wise query tests
run the transformer without a mask on the "sdpa" backend and in eval mode (no jitter), so only the query choice
is the student's code.
"""
import math

import torch
import torch.nn.functional as F

from uniad_mini import attention
from uniad_mini.attention import attend
from uniad_mini.backbone import feature_stack
from uniad_mini.evaluation import anomaly_map, image_score
from uniad_mini.transformer import ReconstructionTransformer, feature_jitter


def loop_mask(h, w, kh, kw, device="cpu"):
    """(N, N) True where key k lies in the kh x kw window of query q, by two loops over the tokens."""
    m = torch.zeros(h * w, h * w, dtype=torch.bool)
    for q in range(h * w):
        for k in range(h * w):
            m[q, k] = abs(q // w - k // w) <= kh // 2 and abs(q % w - k % w) <= kw // 2
    return m.to(device)


# ---- attention (attend's plain PyTorch path) -------------------------------------------------------


def test_masked_attention_is_a_softmax_over_the_visible_keys(monkeypatch):
    monkeypatch.setattr(attention, "_cached_mask", loop_mask)
    g = torch.Generator().manual_seed(0)
    h, w, d = 4, 5, 4
    q, k, v = (torch.randn(1, 2, h * w, d, generator=g, dtype=torch.float64) for _ in range(3))
    out = attend(q, k, v, grid=(h, w), window=3, backend="torch")
    blocked = loop_mask(h, w, 3, 3)
    for head in range(2):
        for i in range(h * w):
            seen = (~blocked[i]).nonzero()[:, 0]
            logits = torch.stack([q[0, head, i] @ k[0, head, j] / math.sqrt(d) for j in seen])
            expected = (logits.softmax(0)[:, None] * v[0, head, seen]).sum(0)
            torch.testing.assert_close(out[0, head, i], expected)


def test_blocked_keys_and_values_get_no_gradient(monkeypatch):
    monkeypatch.setattr(attention, "_cached_mask", loop_mask)
    torch.manual_seed(0)
    h, w = 5, 6
    q, k, v = (torch.randn(1, 2, h * w, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    blocked = loop_mask(h, w, 3, 3)
    for i in (0, 2 * w + 3):  # a corner and an interior query
        out = attend(q, k, v, grid=(h, w), window=3, backend="torch")[0, :, i]
        for grad in torch.autograd.grad(out.sum(), (k, v)):
            per_key = grad[0].abs().sum(dim=(0, 2))  # (N,)
            assert (per_key[blocked[i]] == 0).all() and (per_key[~blocked[i]] > 0).all()


def test_attention_dropout_only_when_asked(monkeypatch):
    monkeypatch.setattr(attention, "_cached_mask", loop_mask)
    q, k, v = (torch.randn(1, 2, 16, 4) for _ in range(3))
    plain = attend(q, k, v, grid=(4, 4), window=1, backend="torch")
    assert torch.equal(plain, attend(q, k, v, grid=(4, 4), window=1, dropout_p=0.0, backend="torch"))
    torch.manual_seed(0)
    dropped = attend(q, k, v, grid=(4, 4), window=1, dropout_p=0.5, backend="torch")
    assert dropped.shape == plain.shape and not torch.allclose(dropped, plain)


# ---- feature jittering -------------------------------------------------------------------------------


def test_jitter_is_the_identity_when_off():
    x = torch.randn(2, 6, 8)
    for scale, prob in ((0.0, 1.0), (-1.0, 1.0), (20.0, 0.0)):
        assert torch.equal(feature_jitter(x, scale, prob), x)
    assert not torch.equal(feature_jitter(x, 20.0, 1.0), x)


def test_jitter_noise_follows_each_tokens_norm():
    torch.manual_seed(0)
    a = torch.randn(64)
    x = torch.cat([a.repeat(10000, 1), 10 * a.repeat(10000, 1)])[None]  # (1, 20000, 64): norms |a| and 10 |a|
    noise = feature_jitter(x, scale=5.0) - x
    small, large = noise[0, :10000].std(), noise[0, 10000:].std()
    assert abs(large / small - 10) < 0.3
    assert abs(small / (5.0 * a.norm() / 64) - 1) < 0.03
    assert abs(noise.mean()) < 0.05 * small


def test_jitter_prob_skips_whole_batches():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    clean = 0
    for _ in range(400):
        changed = (feature_jitter(x, 20.0, prob=0.25) != x).any(dim=-1)  # (2, 5) per token
        assert changed.all() or not changed.any()  # the whole batch is jittered, or none of it
        clean += not changed.any()
    assert 250 < clean < 350  # about 1 - prob of the calls leave x as it is


# ---- the decoder's layer-wise query --------------------------------------------------------------------


def decoder_starts(layerwise: bool):
    """A 3-layer transformer without mask or jitter; (its queries, the input t of each decoder layer, their outputs)."""
    torch.manual_seed(0)
    net = ReconstructionTransformer(8, grid=(3, 4), dim=16, heads=2, layers=3, ffn=16, dropout=0.0,
                                    neighbor_size=None, layerwise_query=layerwise, jitter_scale=0.0, jitter_prob=1.0,
                                    backend="sdpa").eval()
    starts, outs = [], []

    def record(module, args, out):  # returns None: the output is kept as it is
        starts.append(args[0])
        outs.append(out)

    hooks = [layer.register_forward_hook(record) for layer in net.decoder]
    with torch.no_grad():
        y = net(torch.randn(2, 12, 8))
    for hook in hooks:
        hook.remove()
    assert y.shape == (2, 12, 8) and len(starts) == 3
    return net.queries, starts, outs


def test_each_decoder_layer_starts_from_its_own_query():
    queries, starts, _ = decoder_starts(layerwise=True)
    for l, t in enumerate(starts):
        assert torch.equal(t, queries[l].expand(2, -1, -1))


def test_without_layerwise_queries_later_layers_start_from_the_previous_output():
    queries, starts, outs = decoder_starts(layerwise=False)
    assert torch.equal(starts[0], queries[0].expand(2, -1, -1))
    for l in (1, 2):
        assert torch.equal(starts[l], outs[l - 1])


# ---- feature stacking ----------------------------------------------------------------------------------


def test_feature_stack_of_random_taps():
    taps = [torch.randn(2, 3, 12, 16), torch.randn(2, 4, 6, 8), torch.randn(2, 5, 3, 4)]
    f = feature_stack(taps)
    assert f.shape == (2, 12, 3, 4)
    for t, part in zip(taps, f.split([3, 4, 5], dim=1)):
        torch.testing.assert_close(part, F.interpolate(t, size=(3, 4), mode="bilinear", align_corners=True))
    torch.testing.assert_close(f[:, 0, 0, 0], taps[0][:, 0, 0, 0])  # align_corners keeps the corner token


# ---- anomaly map and image score -----------------------------------------------------------------------


def test_anomaly_map_interpolates_between_tokens():
    rec = torch.tensor([[[3.0, 6.0], [0.0, 5.0]], [[4.0, 8.0], [1.0, 12.0]]])[None]  # (1, 2, 2, 2): norms 5 10 / 1 13
    m = anomaly_map(rec, torch.zeros_like(rec), (3, 3))
    expected = torch.tensor([[5.0, 7.5, 10.0], [3.0, 7.25, 11.5], [1.0, 7.0, 13.0]])
    torch.testing.assert_close(m[0], expected)


def test_image_score_of_a_hot_square_and_a_hot_pixel():
    maps = torch.zeros(3, 40, 40)
    maps[0, 10:26, 5:21] = 1.0  # a 16 x 16 square: some window covers it all
    maps[1, 20, 30] = 1.0  # one pixel: every window holding it averages 1/256
    torch.testing.assert_close(image_score(maps), torch.tensor([1.0, 1 / 256, 0.0]))
    torch.testing.assert_close(image_score(maps[1:2], pool=1), torch.tensor([1.0]))
