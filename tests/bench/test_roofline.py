"""The roofline's FLOP count (uniad_mini/bench/roofline.py): a training step counted by hand equals torch's count."""
import pytest
import torch

from uniad_mini.bench.roofline import counted_flops, step_flops
from uniad_mini.config import make_config, train_settings
from uniad_mini.training import make_optimizer, train_step
from uniad_mini.transformer import OnTokens, ReconstructionTransformer


@pytest.mark.parametrize("layers, heads", [(1, 2), (2, 4)])
def test_the_hand_count_of_a_steps_flops_is_torchs_count(one_thread, layers, heads):
    torch.manual_seed(0)
    model = OnTokens(ReconstructionTransformer(
        24, grid=(5, 6), dim=32, heads=heads, layers=layers, ffn=48, dropout=0.0, neighbor_size=3,
        layerwise_query=True, jitter_scale=20.0, jitter_prob=1.0, backend="torch")).train()
    opt = make_optimizer(model.parameters(), train_settings(make_config()))
    x = torch.randn(3, 24, 5, 6)
    counted = counted_flops(lambda: train_step(model, opt, x, 0.1))
    assert counted == step_flops(batch=3, tokens=30, channels=24, dim=32, ffn=48, layers=layers)
