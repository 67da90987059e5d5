"""Graded: attention by hand (paper Sec. 3.3), `attention.attend_by_hand`. Implements no part of the paper itself.

The neighbor mask comes from two loops (the stand-in probes.loop_mask in place of `_cached_mask`), not from the
student's neighbor_mask, so this assignment needs its own part only. While the part runs, PyTorch's own attention is
refused; the tests use it for their expected values.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from grader_probes import loop_mask

pytestmark = pytest.mark.by_hand(why="softmax(q k^T / sqrt(d)) v, blocked keys at weight 0")
STAND_IN = {"attention._cached_mask": "probes.loop_mask"}


@pytest.fixture
def attend(student):
    return lambda *args, **kwargs: student("attention.attend_by_hand", *args, patch=STAND_IN, **kwargs)


def qkv(shape, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad) for _ in range(3))


@pytest.mark.points(3)
def test_attend_without_window_is_full_attention(expect, attend):
    q, k, v = qkv((2, 2, 10, 8))
    got = attend(q, k, v)
    expected = F.scaled_dot_product_attention(q, k, v)
    expect.close(got, expected, "attention without a window", "q, k, v of shape (2, 2, 10, 8), no mask", atol=1e-9)


@pytest.mark.points(3)
def test_masked_attention_is_a_softmax_over_the_visible_keys(expect, attend):
    h, w, d = 4, 5, 4
    q, k, v = qkv((1, 2, h * w, d))
    got = attend(q, k, v, grid=(h, w), window=3)
    blocked = loop_mask(h, w, 3, 3)
    expected = torch.empty(1, 2, h * w, d, dtype=torch.float64)
    for head in range(2):
        for i in range(h * w):
            seen = (~blocked[i]).nonzero()[:, 0]
            logits = torch.stack([q[0, head, i] @ k[0, head, j] / math.sqrt(d) for j in seen])
            expected[0, head, i] = (logits.softmax(0)[:, None] * v[0, head, seen]).sum(0)
    expect.close(got, expected, "masked attention", "q, k, v (1, 2, 20, 4), grid (4, 5), window 3", atol=1e-9)


### BEGIN HIDDEN TESTS
@pytest.mark.points(2, category="gradients")
def test_blocked_keys_and_values_get_no_gradient(expect, attend):
    h, w = 5, 6
    q, k, v = qkv((1, 2, h * w, 4), seed=1, grad=True)
    blocked = loop_mask(h, w, 3, 3)
    for i in (0, 2 * w + 3):  # a corner and an interior query
        weights = torch.zeros(1, 2, h * w, 4, dtype=torch.float64)
        weights[0, :, i] = 1.0  # d(sum of query i's outputs) / d(k, v)
        _, grads = attend(q, k, v, grid=(h, w), window=3, grad=(weights, [1, 2]))
        for name, grad in zip("kv", grads):
            per_key = grad[0].abs().sum(dim=(0, 2))  # (N,)
            expect.equal(int((per_key[blocked[i]] != 0).sum()), 0, f"blocked keys of query {i} with a gradient in {name}",
                         "grid (5, 6), window 3")
            expect.equal(int((per_key[~blocked[i]] == 0).sum()), 0, f"visible keys of query {i} without gradient in {name}",
                         "grid (5, 6), window 3")


@pytest.mark.points(2, category="scale and stability")
def test_the_scale_is_one_over_sqrt_d_and_large_logits_stay_finite(expect, attend):
    q, k, v = qkv((1, 1, 9, 16), seed=2)
    q = q * 300  # logits in the thousands: exp() overflows unless the softmax is the stable one
    got = attend(q, k, v)
    expected = F.scaled_dot_product_attention(q, k, v)
    expect.equal(bool(torch.isfinite(got).all()), True, "all outputs finite", "q of norm ~1200, (1, 1, 9, 16)")
    expect.close(got, expected, "attention with large logits", "q * 300, (1, 1, 9, 16)", atol=1e-9)


@pytest.mark.points(2, category="dropout")
def test_attention_dropout_only_when_asked(expect, attend):
    q, k, v = (t.float() for t in qkv((1, 2, 16, 4), seed=3))
    plain = attend(q, k, v, grid=(4, 4), window=1)
    expect.equal(torch.equal(plain, attend(q, k, v, grid=(4, 4), window=1, dropout_p=0.0)), True,
                 "the same result with dropout_p=0.0", "grid (4, 4), window 1")
    dropped = attend(q, k, v, grid=(4, 4), window=1, dropout_p=0.5, seed=0)
    expect.equal(tuple(dropped.shape), tuple(plain.shape), "shape with dropout")
    expect.equal(torch.allclose(dropped, plain), False, "a different result with dropout_p=0.5", "grid (4, 4), window 1")
### END HIDDEN TESTS
