"""Neighbor-masked attention by hand (uniad_mini/attention.py), checked against PyTorch's SDPA, and the claim
that a query gets nothing, not even a gradient, from the keys in its window."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from uniad_mini.attention import MultiHeadAttention, attend
from uniad_mini.neighbors import neighbor_mask


@given(b=st.integers(1, 2), heads=st.integers(1, 3), h=st.integers(3, 7), w=st.integers(3, 7), d=st.sampled_from([4, 8]))
def test_attend_matches_sdpa_with_bool_mask_forward_and_backward(b, heads, h, w, d):
    window = 3
    assume(h // 2 > 1 or w // 2 > 1)  # else the window blocks every key of the centre query
    q, k, v = (torch.randn(b, heads, h * w, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ours = attend(q, k, v, grid=(h, w), window=window)
    allowed = ~neighbor_mask(h, w, window)  # SDPA's bool mask: True = may attend
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r)


def test_a_query_gets_no_gradient_from_the_keys_and_values_in_its_window():
    """d out_i / d k_j and d out_i / d v_j are exactly zero for every j in i's 3 x 3 window (i itself included),
    and nonzero for every key outside it."""
    torch.manual_seed(0)
    h, w, window = 5, 6, 3
    q, k, v = (torch.randn(1, 2, h * w, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    blocked = neighbor_mask(h, w, window)  # (N, N), True = in the window
    for i in (0, 2 * w + 3, h * w - 1):  # a corner, an interior query, the other corner
        out = attend(q, k, v, grid=(h, w), window=window)[0, :, i]  # (heads, d)
        dk, dv = torch.autograd.grad(out.sum(), (k, v))
        for g in (dk, dv):
            per_key = g[0].abs().sum(dim=(0, 2))  # (N,)
            assert torch.equal(per_key[blocked[i]], torch.zeros(int(blocked[i].sum()), dtype=torch.float64))
            assert (per_key[~blocked[i]] > 0).all()


def test_attend_without_window_is_full_attention():
    q, k, v = (torch.randn(2, 2, 10, 8) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(1, 25, 16)
    mha.eval()
    assert torch.equal(mha(x, x, x, grid=(5, 5), window=3), mha(x, x, x, grid=(5, 5), window=3))
    mha.train()
    assert not torch.equal(mha(x, x, x, grid=(5, 5), window=3), mha(x, x, x, grid=(5, 5), window=3))


def test_unknown_backend_is_rejected():
    q = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attend(q, q, q, backend="cuda")


def test_sdpa_backend_equals_the_plain_reference_forward_and_gradients():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 30, 8, generator=g, requires_grad=True) for _ in range(3))
    ours = attend(q, k, v, grid=(5, 6), window=3, backend="sdpa")
    ref = attend(q, k, v, grid=(5, 6), window=3, backend="torch")
    torch.testing.assert_close(ours, ref)
    g_out = torch.randn(ref.shape, generator=g)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), g_out), torch.autograd.grad(ref, (q, k, v), g_out)):
        torch.testing.assert_close(a, b)


def test_a_triton_model_moved_to_the_cpu_says_how_to_score_there(monkeypatch):
    from uniad_mini.attention import resolve_backend
    from uniad_mini.errors import OptionError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a CPU as a user has it: no interpreter
    with pytest.raises(OptionError, match="backend='torch'"):
        resolve_backend("triton", torch.device("cpu"))
