"""The kernel's benchmark (uniad_mini/bench/kernel.py) without a GPU: it says it measured nothing, and its
interpreter smoke run prints a table."""
import pytest
import torch

from uniad_mini.kernels.fused_attention import INTERPRET


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run for real")
def test_bench_says_it_did_not_measure_without_a_gpu(capsys):
    from uniad_mini.bench import kernel as bench

    assert bench.main([]) == 0
    assert "no CUDA device: not measured on GPU" in capsys.readouterr().out


@pytest.mark.skipif(not INTERPRET, reason="the smoke run is the interpreter's")
def test_bench_interpret_smoke_prints_a_table(capsys):
    from uniad_mini.bench import kernel as bench

    assert bench.main(["--interpret-smoke", "--dtypes", "fp32"]) == 0
    out = capsys.readouterr().out
    for method in ("fused", "torch", "sdpa"):
        assert f"| fp32 | 1 | 8x8 | {method} |" in out


