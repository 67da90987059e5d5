"""The training loop's precision switch: bf16 autocast for the matrix products where the hardware has it,
fp32 everywhere else, and the same optimisation either way (within bf16's rounding)."""
import pytest
import torch

from uniad_mini import training
from uniad_mini.config import Config, make_config, train_settings
from uniad_mini.transformer import OnTokens, ReconstructionTransformer
from uniad_mini.training import learning_rate, make_optimizer, resolve_precision, train, train_step


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return OnTokens(ReconstructionTransformer(16, grid=(6, 6), dim=32, heads=2, layers=1, ffn=64, dropout=0.0,
                                              neighbor_size=3, layerwise_query=False, jitter_scale=0.0,
                                              jitter_prob=1.0, backend="torch"))


def gradient(precision: str, x: torch.Tensor) -> torch.Tensor:
    """The flat gradient of the loss of one step of `train_step` (lr 0: the weights do not move)."""
    model = tiny_model()
    opt = make_optimizer(model.parameters(), train_settings(make_config(lr=1e-12, weight_decay=0.0)))
    loss = train_step(model, opt, x, 0.0, precision=precision)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    return loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_a_bf16_step_follows_the_fp32_step_within_bf16_rounding(one_thread):
    x = torch.randn(4, 16, 6, 6, generator=torch.Generator().manual_seed(1))
    (loss32, g32), (loss16, g16) = gradient("fp32", x), gradient("bf16", x)
    assert loss16 != loss32  # autocast really ran: bf16 rounds differently
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-2)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch, native, expected):
    monkeypatch.setattr(training, "native_bf16", lambda device: native)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice is kept
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; choose one of auto, fp32, bf16"):
        make_config(precision="fp16")


def test_a_resumed_run_keeps_the_precision_it_started_with(one_thread, monkeypatch):
    feats = torch.randn(8, 16, 6, 6)
    model = tiny_model()
    state = train(model, feats, train_settings(make_config(epochs=1, batch_size=4, precision="auto")), progress=False)
    started = state["precision"]
    monkeypatch.setattr(training, "native_bf16", lambda device: started == "fp32")  # "auto" would now flip
    state = train(model, feats, train_settings(make_config(epochs=2, batch_size=4, precision="auto")), state, progress=False)
    assert state["precision"] == started and state["epoch"] == 2


def test_learning_rate_schedules():
    cfg = train_settings(Config(lr=1.0, warmup=0.1, schedule="cosine"))
    assert learning_rate(cfg, 0, 100) == pytest.approx(0.1)
    assert learning_rate(cfg, 10, 100) == pytest.approx(1.0)
    assert learning_rate(cfg, 99, 100) < 0.01
    paper_config = make_config(recipe="paper")
    assert (paper_config.lr, paper_config.grad_clip, paper_config.dropout, paper_config.epochs,
            paper_config.standardize) == (1e-4, 0.1, 0.1, 1000, False)
    paper = train_settings(paper_config)
    assert learning_rate(paper, 79, 100) == pytest.approx(1e-4) and learning_rate(paper, 80, 100) == pytest.approx(1e-5)
