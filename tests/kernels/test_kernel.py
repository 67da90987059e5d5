"""The fused Triton kernel against its oracles: the plain PyTorch reference (float64), PyTorch's
`scaled_dot_product_attention` with a bool mask, autograd for the gradients, and the model trained with
the PyTorch backend.

On CPU every kernel runs in Triton's interpreter, which must be switched on before Triton defines the
kernels -- hence the first line. On a CUDA machine without TRITON_INTERPRET the same tests run compiled.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before torch / triton / uniad_mini are imported

import math  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytest.importorskip("triton")

from uniad_mini.attention import attend
from uniad_mini.neighbors import check_grid_window, neighbor_mask  # noqa: E402
from uniad_mini.kernels import neighbor_attention  # noqa: E402
from uniad_mini.kernels.dropout import dropout_threshold, effective_dropout_p  # noqa: E402
from uniad_mini.kernels.fused_attention import dropout_keep_mask, reference_attention  # noqa: E402

import uniad_mini.kernels.fused_attention as kernel_module  # noqa: E402
INTERPRET = kernel_module.INTERPRET
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"

pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not INTERPRET,
    reason="uniad_mini.kernels was imported before TRITON_INTERPRET=1 was set and there is no GPU: "
    "run `TRITON_INTERPRET=1 pytest tests/kernels/test_kernel.py`",
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# max |kernel - reference| allowed, relative to max(1, max |reference|). Under the interpreter fp16/bf16
# differ from the float64 reference only by the rounding of inputs and outputs; on a GPU the softmax
# weights also meet V in half precision.
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def assert_close(actual, expected, dtype, what):
    scale = max(1.0, expected.abs().max().item())
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3g} > {TOL[dtype] * scale:.3g}"


def make_qkv(B, heads, N, d, dtype, seed, layout="bhnd"):
    """q, k, v leaves of shape (B, heads, N, d); layout "bnhd" gives the strided views a model makes."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        if layout == "bnhd":  # (B, N, heads, d) memory, viewed as (B, heads, N, d)
            x = torch.randn(B, N, heads, d, generator=gen).to(DEVICE, dtype).transpose(1, 2)
        else:
            x = torch.randn(B, heads, N, d, generator=gen).to(DEVICE, dtype)
        out.append(x.requires_grad_())
    return out


def reference_with_grads(q, k, v, grid, window, do, dropout_p=0.0, keep=None, scale=None):
    """Output and (dq, dk, dv) of the float64 PyTorch reference at the same (rounded) inputs."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    out = reference_attention(q64, k64, v64, grid, window, dropout_p, keep, scale)
    return out, torch.autograd.grad(out, (q64, k64, v64), do.double())


# --- strategies -----------------------------------------------------------------------------------


@st.composite
def problems(draw, max_tokens=100):
    """A grid (incl. 1-row and non-square ones), a window leaving every query a key, and sizes."""
    H = draw(st.integers(1, 10))
    W = draw(st.integers(1, max(1, max_tokens // H)))
    kh = draw(st.integers(1, 7))
    kw = draw(st.integers(1, 7))
    # shrink the window until the grid's centre query sees some key (the kernel would raise otherwise)
    while H // 2 <= kh // 2 and W // 2 <= kw // 2 and (kh > 1 or kw > 1):
        kh, kw = max(1, kh - 2), max(1, kw - 2)
    if H // 2 <= kh // 2 and W // 2 <= kw // 2:  # a 1x1 window still hides everything (grid <= 1x2)
        W = 3
    return dict(B=draw(st.integers(1, 2)), heads=draw(st.integers(1, 2)), grid=(H, W), window=(kh, kw),
                d=draw(st.sampled_from([16, 24, 32, 48, 64])))


# --- forward and backward against the reference ---------------------------------------------------


@settings(max_examples=12)
@given(p=problems(), dtype=st.sampled_from(list(DTYPES)), layout=st.sampled_from(["bhnd", "bnhd"]),
       seed=st.integers(0, 2**16))
@example(p=dict(B=1, heads=2, grid=(1, 37), window=(1, 5), d=16), dtype="fp32", layout="bhnd", seed=1)
@example(p=dict(B=2, heads=1, grid=(5, 13), window=(3, 7), d=48), dtype="bf16", layout="bnhd", seed=2)
@example(p=dict(B=1, heads=1, grid=(9, 11), window=(4, 6), d=24), dtype="fp16", layout="bhnd", seed=3)
def test_forward_and_all_three_gradients_match_the_reference(p, dtype, layout, seed):
    dtype = DTYPES[dtype]
    H, W = p["grid"]
    q, k, v = make_qkv(p["B"], p["heads"], H * W, p["d"], dtype, seed, layout)
    out = neighbor_attention(q, k, v, grid=p["grid"], window=p["window"])
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_grads = reference_with_grads(q, k, v, p["grid"], p["window"], do)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, ref, dtype, "output")
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.shape == r.shape and g.dtype == dtype
        assert_close(g, r, dtype, name)


@settings(max_examples=8)
@given(p=problems(), seed=st.integers(0, 2**16), scale=st.sampled_from([None, 0.05, 0.5]))
def test_forward_matches_sdpa_with_a_bool_mask(p, seed, scale):
    H, W = p["grid"]
    q, k, v = make_qkv(p["B"], p["heads"], H * W, p["d"], torch.float32, seed)
    allowed = ~neighbor_mask(H, W, p["window"]).to(DEVICE)  # SDPA: True = takes part
    with torch.no_grad():
        out = neighbor_attention(q, k, v, grid=p["grid"], window=p["window"], scale=scale)
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    torch.testing.assert_close(out, sdpa, atol=2e-5, rtol=1e-4)


def check_fp32_against_reference(q, k, v, grid, window):
    """Output and dQ, dK, dV of the kernel against the float64 reference, for one fp32 problem."""
    out = neighbor_attention(q, k, v, grid=grid, window=window)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_grads = reference_with_grads(q, k, v, grid, (window, window), do)
    assert_close(out, ref, torch.float32, "output")
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(g, r, torch.float32, name)


def test_default_uniad_shape_14x14_window_7_head_dim_32():
    check_fp32_against_reference(*make_qkv(1, 2, 196, 32, torch.float32, seed=0), grid=(14, 14), window=7)


@pytest.mark.parametrize("d", [16, 128])
def test_smallest_and_largest_head_dims(d):
    check_fp32_against_reference(*make_qkv(1, 1, 48, d, torch.float32, seed=d), grid=(6, 8), window=3)


def test_gradients_of_a_sum_read_a_broadcast_output_gradient():
    q, k, v = make_qkv(2, 2, 20, 16, torch.float32, seed=4)
    neighbor_attention(q, k, v, grid=(4, 5), window=3).sum().backward()  # dO has strides (0, 0, 0, 0)
    ref, ref_grads = reference_with_grads(q, k, v, (4, 5), (3, 3), torch.ones(2, 2, 20, 16, device=DEVICE))
    for name, x, r in zip(("dq", "dk", "dv"), (q, k, v), ref_grads):
        assert_close(x.grad, r, torch.float32, name)


@pytest.mark.parametrize("grid, window", [((6, 8), (5, 5)),  # the band is every key tile
                                          ((16, 16), (3, 3)),  # the band is 3 or 4 of 8 key tiles
                                          ((3, 50), (1, 3))])  # non-square, N = 150 not a multiple of 32
def test_band_and_mask_free_key_tiles_together_match_the_reference(grid, window):
    q, k, v = make_qkv(1, 1, grid[0] * grid[1], 16, torch.float32, seed=1)
    out = neighbor_attention(q, k, v, grid=grid, window=window)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_grads = reference_with_grads(q, k, v, grid, window, do)
    assert_close(out, ref, torch.float32, "output")
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(g, r, torch.float32, name)


@pytest.fixture
def odd_tiles(monkeypatch):
    """Give each kernel tiles unlike the others' (forward 16 x 64, dK/dV 64 x 16, dQ 16 x 32): the band
    bounds are then rounded to other steps than the owned block, and dropout bits meet other tilings."""
    import triton

    for name, (m, n) in (("_fwd_kernel", (16, 64)), ("_bwd_dkdv_kernel", (64, 16)), ("_bwd_dq_kernel", (16, 32))):
        kernel = getattr(kernel_module, name)
        monkeypatch.setattr(kernel, "configs", [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=1)])


@pytest.mark.skipif(not INTERPRET, reason="swaps the interpreter's single tile configuration")
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_results_do_not_depend_on_the_tiles(odd_tiles, dropout_p):
    grid, window, (B, heads) = (9, 11), (5, 3), (1, 1)
    N = grid[0] * grid[1]
    q, k, v = make_qkv(B, heads, N, 16, torch.float32, seed=5)
    out = neighbor_attention(q, k, v, grid=grid, window=window, dropout_p=dropout_p, seed=11)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    keep = dropout_keep_mask(11, B, heads, N, dropout_p, device=DEVICE) if dropout_p else None
    ref, ref_grads = reference_with_grads(q, k, v, grid, window, do, dropout_p, keep)
    assert_close(out, ref, torch.float32, "output")
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(g, r, torch.float32, name)


def test_the_interpreter_runs_one_configuration_and_the_gpu_several():
    for name in ("_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"):
        configs = getattr(kernel_module, name).configs
        assert len(configs) == 1 if INTERPRET else len(configs) >= 1
        for c in configs:
            assert c.kwargs["BLOCK_N"] % 16 == 0  # dropout draws 16 keys at a time


# --- dropout ----------------------------------------------------------------------------------------


@settings(max_examples=5)
@given(p=problems(max_tokens=72), dtype=st.sampled_from(["fp32", "fp16"]), seed=st.integers(0, 2**31 - 2),
       dropout_p=st.sampled_from([0.1, 0.5]))
def test_dropout_forward_and_gradients_match_the_reference_with_the_kernels_mask(p, dtype, seed, dropout_p):
    dtype = DTYPES[dtype]
    H, W = p["grid"]
    B, heads, N = p["B"], p["heads"], H * W
    q, k, v = make_qkv(B, heads, N, p["d"], dtype, seed % 1000)
    out = neighbor_attention(q, k, v, grid=p["grid"], window=p["window"], dropout_p=dropout_p, seed=seed)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    keep = dropout_keep_mask(seed, B, heads, N, dropout_p, device=DEVICE)
    ref, ref_grads = reference_with_grads(q, k, v, p["grid"], p["window"], do, dropout_p, keep)
    assert_close(out, ref, dtype, "output")
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(g, r, dtype, name)


def dropped_weights(dropout_p, seed, B=2, heads=2, grid=(4, 8), window=(3, 3)):
    """Run the kernel with v = identity (d = N): the output *is* the dropped weight matrix A, and with
    dO = identity too, dV = A^T. So the forward's and the backward's dropout masks can be read off."""
    N = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(0)
    q = (0.1 * torch.randn(B, heads, N, N, generator=gen)).to(DEVICE).requires_grad_()
    k = (0.1 * torch.randn(B, heads, N, N, generator=gen)).to(DEVICE).requires_grad_()
    v = torch.eye(N, device=DEVICE).expand(B, heads, N, N).contiguous().requires_grad_()
    a = neighbor_attention(q, k, v, grid=grid, window=window, dropout_p=dropout_p, seed=seed)  # (B, h, N, N)
    (dv,) = torch.autograd.grad(a, (v,), torch.eye(N, device=DEVICE).expand(B, heads, N, N))
    return a.detach(), dv.transpose(-2, -1), ~neighbor_mask(*grid, window).to(DEVICE)


def test_dropout_backward_regenerates_exactly_the_forward_mask():
    a, dv_t, visible = dropped_weights(0.3, seed=1234)
    fwd_kept, bwd_kept = a != 0, dv_t != 0
    assert torch.equal(fwd_kept, bwd_kept)
    keep = dropout_keep_mask(1234, 2, 2, 32, 0.3, device=DEVICE)
    assert torch.equal(fwd_kept, keep & visible)  # ...and both are the helper's bits
    torch.testing.assert_close(a, dv_t, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_keeps_one_minus_p_of_the_weights_and_rescales_them(dropout_p):
    a, _, visible = dropped_weights(dropout_p, seed=7)
    kept = (a != 0) & visible
    n = visible.expand_as(a).sum().item()
    rate = kept.sum().item() / n
    p = effective_dropout_p(dropout_p)  # the rate the 8-bit thresholds realise
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) < 5 * sigma, f"keep rate {rate:.4f}, expected {1 - p}"
    # kept weights are the softmax weights / (1 - p): the rows of A sum to 1 on average
    assert abs(a.sum(-1).mean().item() - 1.0) < 0.1  # 128 rows of ~23 weights: ~5 standard errors at p=0.5
    # the dense mask helper on a bigger problem: the right rate, and no two (batch, head) slices alike
    keep = dropout_keep_mask(99, 3, 2, 196, dropout_p, device=DEVICE)
    n = keep.numel()
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    flat = keep.flatten(0, 1)  # (B*heads, N, N)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(len(flat)) for j in range(i))
    assert not torch.equal(keep[0, 0, 0], keep[0, 0, 1])  # rows differ too


def test_dropout_p_is_realised_in_steps_of_one_256th():
    assert [dropout_threshold(p) for p in (0.0, 1e-4, 0.1, 0.5, 0.999)] == [0, 1, 26, 128, 255]
    assert effective_dropout_p(0.1) == 26 / 256 and effective_dropout_p(0.5) == 0.5
    # the realised keep fraction is 1 - 26/256 = 0.8984, not 0.9 (640k decisions: ~4 sigma apart)
    keep = dropout_keep_mask(3, 2, 2, 400, 0.1, device=DEVICE)
    sigma = math.sqrt(0.1 * 0.9 / keep.numel())
    rate = keep.float().mean().item()
    assert abs(rate - (1 - 26 / 256)) < 3 * sigma, f"keep rate {rate:.5f}, expected {1 - 26 / 256:.5f}"
    assert abs(rate - (1 - 26 / 256)) < abs(rate - 0.9)
    # every byte position of the 16 keys that share one Philox call keeps at the same rate: keys
    # n = 64 j + 8 a + 2 c + e share a call for each (query, j, c); (a, e) picks the byte
    per_lane = keep[..., :384].reshape(-1, 6, 8, 4, 2).transpose(2, 3).reshape(-1, 16).float().mean(0)
    assert (per_lane - (1 - 26 / 256)).abs().max().item() < 5 * math.sqrt(0.1 * 0.9 / (keep.numel() / 16))


def test_dropout_is_reproducible_for_a_seed():
    q, k, v = make_qkv(1, 2, 30, 16, torch.float32, seed=0)
    run = lambda **kw: neighbor_attention(q, k, v, grid=(5, 6), window=3, dropout_p=0.2, **kw)  # noqa: E731
    with torch.no_grad():
        assert torch.equal(run(seed=5), run(seed=5))
        assert not torch.equal(run(seed=5), run(seed=6))
        torch.manual_seed(0)
        first = run()
        torch.manual_seed(0)
        assert torch.equal(first, run())


def test_no_dropout_draws_no_random_numbers():
    q, k, v = make_qkv(1, 1, 16, 16, torch.float32, seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        neighbor_attention(q, k, v, grid=(4, 4), window=1)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # the model's other random draws are not shifted


# --- errors a learner will hit ------------------------------------------------------------------------


def test_a_window_that_hides_every_key_raises_the_references_error():
    q, k, v = make_qkv(1, 1, 16, 16, torch.float32, seed=0)
    with pytest.raises(ValueError) as from_reference:
        check_grid_window(4, 4, 5)
    with pytest.raises(ValueError) as from_kernel:
        neighbor_attention(q, k, v, grid=(4, 4), window=5)
    assert str(from_kernel.value) == str(from_reference.value)


def test_inputs_are_checked():
    q, k, v = make_qkv(1, 1, 16, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="do not fill a 3x5 grid"):
        neighbor_attention(q, k, v, grid=(3, 5), window=1)
    with pytest.raises(TypeError, match="fp32, fp16 or bf16"):
        neighbor_attention(q.double(), k.double(), v.double(), grid=(4, 4), window=1)
    big = torch.zeros(1, 1, 16, 160, device=DEVICE)
    with pytest.raises(ValueError, match="head dim 160"):
        neighbor_attention(big, big, big, grid=(4, 4), window=1)
    with pytest.raises(ValueError, match="dropout_p"):
        neighbor_attention(q, k, v, grid=(4, 4), window=1, dropout_p=1.0)
    with pytest.raises(ValueError, match="scale must be positive"):  # the row max is taken on raw scores
        neighbor_attention(q, k, v, grid=(4, 4), window=1, scale=-0.5)


def test_triton_on_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    q = torch.zeros(1, 1, 16, 16)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises((RuntimeError, ValueError), match="TRITON_INTERPRET=1"):  # attend: an OptionError
        attend(q, q, q, grid=(4, 4), window=1, backend="triton")
    monkeypatch.setattr(kernel_module, "INTERPRET", False)  # kernels compiled for a GPU, CPU tensors
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        neighbor_attention(q, q, q, grid=(4, 4), window=1)


# --- in the model ---------------------------------------------------------------------------------------


def test_attend_gives_the_same_result_with_both_backends():
    q, k, v = make_qkv(2, 2, 35, 16, torch.float32, seed=0, layout="bnhd")
    fused = attend(q, k, v, grid=(5, 7), window=3, backend="triton")
    plain = attend(q, k, v, grid=(5, 7), window=3, backend="torch")
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_a_model_trains_to_the_same_losses_with_the_torch_and_triton_backends():
    model_module = pytest.importorskip("uniad_mini.model")
    tiny = dict(image_size=128, neighbor_size=3, hidden_dim=16, heads=1, layers=1, ffn_dim=32,
                dropout=0.0, epochs=3, batch_size=2, seed=0, precision="fp32")  # 8 x 8 tokens, 3 optimizer steps
    feats = torch.randn(2, 192, 8, 8, generator=torch.Generator().manual_seed(0))  # cached features
    losses, start = {}, None
    for backend in ("torch", "triton"):
        model = model_module.UniAD(backend=backend, **tiny).to(DEVICE)
        assert feats.shape[1] == model.channels
        if start is None:
            start = {k: t.clone() for k, t in model.transformer.state_dict().items()}
        model.transformer.load_state_dict(start)  # identical initial weights for both runs
        model.fit_features(feats.to(DEVICE), progress=False)
        losses[backend] = torch.tensor(model.train_state["history"])
    assert len(losses["torch"]) == 3
    torch.testing.assert_close(losses["triton"], losses["torch"], atol=1e-5, rtol=1e-5)


def test_kernels_compile_for_an_h200_without_spilling():
    """The interpreter runs code the compiler would reject (e.g. a loop re-binding a block to another
    shape): compile the four kernels (delta, forward, dK/dV, dQ) in their default configuration for
    sm_90 ahead of time, in a process without it. (`python -m uniad_mini.bench.kernel --compile-check`
    compiles every autotuning configuration.)"""
    import subprocess

    code = ("from uniad_mini.bench.kernel import compile_check\n"
            "print('\\n'.join(compile_check(['bf16'], [32], [0.1], all_configs=False)))")  # training config
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [r.split("|")[1:-1] for r in done.stdout.splitlines() if r.startswith("|")]
    assert [r[3].strip() for r in rows] == ["delta", "fwd", "dkdv", "dq"]
    for row in rows:
        assert row[6].strip() == "0", f"spills: {'|'.join(row)}"
        if row[3].strip() != "delta":  # a row sum, no matrix product
            assert row[7].strip() == "wgmma", f"no tensor cores: {'|'.join(row)}"
