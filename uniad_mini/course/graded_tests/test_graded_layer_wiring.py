"""Graded: the encoder and decoder layers' wiring (paper Sec. 3.2-3.3, Fig. 3), `EncoderLayer.forward` and
`DecoderLayer.forward`: where the mask, the queries, the positions and the residuals enter. Implements no part of the
paper itself. Each attention is wrapped in a spy that records what it was given (probes.Spy); the attention inside
is PyTorch's own with the mask from loops (probes.pytorch_attention), so no other assignment's part is needed; the
layers run in eval mode."""
import grader_probes as probes
import pytest
import torch
import torch.nn as nn

from uniad_mini.transformer import DecoderLayer, EncoderLayer

pytestmark = pytest.mark.by_hand(why="the layers call their own attention modules, self.attn / attn1 / attn2")

B, N, D, GRID = 2, 12, 16, (3, 4)
MASK = {"grid": GRID, "window": 1}


STAND_IN = {"attention.attend_by_hand": "probes.pytorch_attention"}


def made(cls, *names):
    torch.manual_seed(0)
    layer = cls(D, 2, 32, 0.1, "torch").eval()
    for n in names:
        setattr(layer, n, probes.Spy(getattr(layer, n)))
    with torch.no_grad():  # LayerNorm weights away from 1 / 0, so a missing norm shows
        for m in layer.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return layer


def inputs(k):
    g = torch.Generator().manual_seed(k)
    return [torch.randn(B, N, D, generator=g) for _ in range(3)], torch.randn(N, D, generator=g)


def which(t, named: dict) -> str:
    found = [name for name, c in named.items() if t.shape == c.shape and torch.allclose(t, c, atol=1e-6)]
    return found[0] if found else "something else"


def run(student, layer, *args):
    """The student's layer on args: (its output, {attention name: [(query, key, value, mask_args) of each call]})."""
    out, after = student("probes.forward_of", layer, *args, patch=STAND_IN, after=True)
    return out, after[0]["calls"]


def check_call(expect, calls, label, expected: dict, named: dict):
    if len(calls) != 1:
        expect.fail(f"calls of {label}", 1, len(calls), "one forward pass")
    query, key, value, mask_args = calls[0]
    for role, got in (("query", query), ("key", key), ("value", value)):
        if which(got, {role: expected[role]}) != role:
            expect.fail(f"the {role} given to {label}", expected[role + "_name"], which(got, named), f"B={B}, N={N}, D={D}")
    expect.equal(mask_args, MASK, f"the mask arguments given to {label}", "mask_args = {grid: (3, 4), window: 1}")


@pytest.mark.points(2)
def test_encoder_layer_keeps_the_shape_and_gives_its_attention_the_mask(expect, student):
    layer, ((x, _, _), pos) = made(EncoderLayer, "attn"), inputs(0)
    out, calls = run(student, layer, x, pos, MASK)
    expect.equal(tuple(out.shape), (B, N, D), "the encoder layer's output shape", "x (2, 12, 16), pos (12, 16)")
    expect.equal(len(calls["attn"]), 1, "calls of the attention", "one forward pass")
    expect.equal(calls["attn"][0][3], MASK, "the mask arguments given to the attention", "the neighbor mask on")


@pytest.mark.points(2)
def test_decoder_layer_keeps_the_shape_and_gives_both_attentions_the_mask(expect, student):
    layer, ((t, enc, prev), pos) = made(DecoderLayer, "attn1", "attn2"), inputs(1)
    out, calls = run(student, layer, t, enc, prev, pos, MASK)
    expect.equal(tuple(out.shape), (B, N, D), "the decoder layer's output shape", "t, enc, prev (2, 12, 16)")
    for name in ("attn1", "attn2"):
        expect.equal(len(calls[name]), 1, f"calls of {name}", "one forward pass")
        expect.equal(calls[name][0][3], MASK, f"the mask arguments given to {name}", "the neighbor mask on")


### BEGIN HIDDEN TESTS
def encoder_expected(layer, x, pos):
    a = layer.attn.inner(x + pos, x + pos, x, **MASK)
    h = layer.norm1(x + a)
    return h, layer.norm2(h + layer.ffn(h))


def decoder_expected(layer, t, enc, prev, pos):
    t1 = layer.norm1(t + layer.attn1.inner(t + pos, enc + pos, enc, **MASK))
    t2 = layer.norm2(t1 + layer.attn2.inner(t1 + pos, prev + pos, prev, **MASK))
    return t1, layer.norm3(t2 + layer.ffn(t2))


@pytest.mark.points(2, category="where positions enter the encoder")
def test_encoder_attention_reads_positions_in_query_and_key_not_in_value(expect, student):
    layer, ((x, _, _), pos) = made(EncoderLayer, "attn"), inputs(2)
    _, calls = run(student, layer, x, pos, MASK)
    named = {"x": x, "x + pos": x + pos, "pos": pos.expand(B, -1, -1)}
    check_call(expect, calls["attn"], "the attention", {"query": x + pos, "query_name": "x + pos", "key": x + pos,
                                                         "key_name": "x + pos", "value": x, "value_name": "x"}, named)


@pytest.mark.points(3, category="the encoder's residual blocks")
def test_encoder_layer_is_two_post_norm_residual_blocks(expect, student):
    layer, ((x, _, _), pos) = made(EncoderLayer, "attn"), inputs(3)
    got, _ = run(student, layer, x, pos, MASK)
    with torch.no_grad():
        _, expected = encoder_expected(layer, x, pos)
    expect.close(got, expected, "the encoder layer's output",
                 "x (2, 12, 16); expected norm2(h + ffn(h)) with h = norm1(x + attention)")


@pytest.mark.points(2, category="what the decoder's attentions read")
def test_decoder_attentions_read_the_encoded_image_then_the_previous_output(expect, student):
    layer, ((t, enc, prev), pos) = made(DecoderLayer, "attn1", "attn2"), inputs(4)
    _, calls = run(student, layer, t, enc, prev, pos, MASK)
    with torch.no_grad():
        t1, _ = decoder_expected(layer, t, enc, prev, pos)
    named = {"t": t, "t + pos": t + pos, "enc": enc, "enc + pos": enc + pos, "prev": prev, "prev + pos": prev + pos,
             "the first block's output": t1, "the first block's output + pos": t1 + pos}
    check_call(expect, calls["attn1"], "attn1", {"query": t + pos, "query_name": "t + pos", "key": enc + pos,
                                                 "key_name": "enc + pos", "value": enc, "value_name": "enc"}, named)
    check_call(expect, calls["attn2"], "attn2", {"query": t1 + pos, "query_name": "the first block's output + pos",
                                                 "key": prev + pos, "key_name": "prev + pos", "value": prev,
                                                 "value_name": "prev"}, named)


@pytest.mark.points(3, category="the decoder's residual blocks")
def test_decoder_layer_is_three_post_norm_residual_blocks(expect, student):
    layer, ((t, enc, prev), pos) = made(DecoderLayer, "attn1", "attn2"), inputs(5)
    got, _ = run(student, layer, t, enc, prev, pos, MASK)
    with torch.no_grad():
        _, expected = decoder_expected(layer, t, enc, prev, pos)
    expect.close(got, expected, "the decoder layer's output",
                 "t, enc, prev (2, 12, 16); expected three blocks x = norm(x + sub-block(x)): attn1, attn2, ffn")
### END HIDDEN TESTS
