"""Graded: the training step (paper Sec. 3.4 and 4.1): `training.train_step` (the loss on the clean target, the
optimizer step) and `ReconstructionTransformer.jitter_in_training` (jitter in training mode only). Implements no part of
the paper itself. The models here are small stand-ins whose every number the test can follow."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from uniad_mini.training import train_step
from uniad_mini.transformer import ReconstructionTransformer


class NoisyConv(nn.Module):
    """A 1x1 convolution that, like UniAD, corrupts its own input in training mode (a fixed offset here)."""

    def __init__(self, c=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):  # (B, C, h, w)
        return self.conv(x + 0.5 if self.training else x)


def transformer(**switches):
    """A one-layer transformer on a 3 x 4 grid of 8 channels, every option given (there are no defaults)."""
    options = dict(grid=(3, 4), dim=16, heads=2, layers=1, ffn=16, dropout=0.0, neighbor_size=None,
                   layerwise_query=True, jitter_scale=20.0, jitter_prob=1.0, backend="sdpa")
    return ReconstructionTransformer(8, **{**options, **switches})


def by_hand_step(model, x, lr, clip, weight=1.0):
    """The expected step, written out: loss on the clean x, SGD, the gradient's norm clipped to `clip`."""
    m = copy.deepcopy(model)
    loss = F.mse_loss(m(x), x) * weight
    grads = torch.autograd.grad(loss, list(m.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    factor = min(1.0, clip / (norm.item() + 1e-6)) if clip else 1.0
    with torch.no_grad():
        return loss.item(), [p - lr * factor * g for p, g in zip(m.parameters(), grads)]


def step(model, x, lr=0.1, clip=0.0, weight=1.0):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return train_step(model, opt, x, clip, weight)


def check_step(expect, model, x, given, lr=0.1, clip=0.0, weight=1.0):
    loss, params = by_hand_step(model, x, lr, clip, weight)
    got = step(model, x, lr, clip, weight)
    if not isinstance(got, torch.Tensor) or got.requires_grad:
        expect.fail("train_step's return", "the loss as a tensor without a graph (detached)", repr(got)[:80], given)
    expect.close(got.reshape(()), torch.tensor(loss), "the loss train_step returns", given)
    for (name, p), e in zip(model.named_parameters(), params):
        expect.close(p, e, f"parameter {name} after the step", given)


@pytest.mark.points(3)
def test_the_loss_is_the_mse_to_the_clean_input_and_one_optimizer_step_is_taken(expect):
    model, x = NoisyConv().train(), torch.randn(4, 3, 5, 5)
    check_step(expect, model, x, "a 1x1 conv that adds 0.5 to its input in training mode; x (4, 3, 5, 5); SGD lr 0.1")


@pytest.mark.points(2)
def test_the_input_is_jittered_in_training_mode_only(expect):
    net = transformer()
    tokens = torch.randn(2, 12, 8)
    expect.equal(net.eval().jitter_in_training(tokens) is tokens, True, "jitter_in_training in eval mode: the tokens themselves",
                 "eval(), jitter_scale=20")
    torch.manual_seed(0)
    jittered = net.train().jitter_in_training(tokens)
    expect.equal(isinstance(jittered, torch.Tensor) and tuple(jittered.shape) == (2, 12, 8), True,
                 "jitter_in_training in training mode: tokens of the same shape", "train(), jitter_scale=20")
    expect.equal(torch.equal(jittered, tokens), False, "jitter_in_training in training mode: tokens changed by noise",
                 "train(), jitter_scale=20")


### BEGIN HIDDEN TESTS
@pytest.mark.points(2)
def test_the_gradient_norm_is_clipped_to_grad_clip(expect):
    model, x = NoisyConv().train(), 10 * torch.randn(4, 3, 5, 5)  # large inputs: a large gradient
    check_step(expect, model, x, "x (4, 3, 5, 5) * 10, SGD lr 0.1, grad_clip 0.5", clip=0.5)


@pytest.mark.points(2)
def test_gradients_of_an_earlier_step_do_not_add_up(expect):
    model, x = NoisyConv().train(), torch.randn(4, 3, 5, 5)
    step(model, x)
    check_step(expect, model, x, "the second of two steps on the same batch, SGD lr 0.1")


@pytest.mark.points(1)
def test_the_loss_is_weighted(expect):
    model, x = NoisyConv().train(), torch.randn(2, 3, 4, 4)
    check_step(expect, model, x, "weight 0.25 (a rank's share of the batch)", weight=0.25)


@pytest.mark.points(2)
def test_the_jitter_is_the_models_own_and_follows_its_settings(expect, monkeypatch):
    from uniad_mini import transformer as module

    seen = []
    monkeypatch.setattr(module, "feature_jitter", lambda x, scale, prob=1.0: seen.append((scale, prob)) or x + 1)
    net = transformer(jitter_scale=7.0, jitter_prob=0.5).train()
    tokens = torch.randn(2, 12, 8)
    out = net.jitter_in_training(tokens)
    expect.equal(seen, [(7.0, 0.5)], "feature_jitter's (scale, prob) in training mode", "jitter_scale=7, jitter_prob=0.5")
    expect.close(out, tokens + 1, "jitter_in_training in training mode: feature_jitter's result", "train()")
    seen.clear()
    net.eval().jitter_in_training(tokens)
    expect.equal(seen, [], "calls of feature_jitter in eval mode", "eval()")


@pytest.mark.points(2)
def test_eval_mode_is_deterministic_and_training_mode_is_not(expect):
    torch.manual_seed(0)
    net = transformer(dropout=0.1)
    tokens = torch.randn(2, 12, 8)
    with torch.no_grad():
        a, b = net.eval()(tokens), net(tokens)
        c, d = net.train()(tokens), net(tokens)
    expect.equal(torch.equal(a, b), True, "two eval-mode passes of the same tokens agree", "eval(), dropout 0.1")
    expect.equal(torch.equal(c, d), False, "two training-mode passes differ (jitter, dropout)", "train()")
### END HIDDEN TESTS
