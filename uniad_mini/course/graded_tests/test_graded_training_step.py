"""Graded: the training step (paper Sec. 3.4 and 4.1): `training.train_step` (the loss on the clean target, the
optimizer step) and `ReconstructionTransformer.jitter_in_training` (jitter in training mode only). Implements no part of
the paper itself. The model is a small stand-in whose every number the test can follow (probes.NoisyConv), and the
jitter a stand-in that adds 1 (probes.add_one), so no other assignment's part is needed."""
import copy

import grader_probes as probes
import pytest
import torch
import torch.nn.functional as F

from uniad_mini.transformer import ReconstructionTransformer

pytestmark = pytest.mark.by_hand(why="the step in a few lines: the loss, backward, clipping, the optimizer's step")
JITTER = "transformer.ReconstructionTransformer.jitter_in_training"
STAND_IN = {"transformer.feature_jitter": "probes.add_one"}


def transformer(**switches):
    """A one-layer transformer on a 3 x 4 grid of 8 channels, every option given (there are no defaults)."""
    options = dict(grid=(3, 4), dim=16, heads=2, layers=1, ffn=16, dropout=0.0, neighbor_size=None,
                   layerwise_query=True, jitter_scale=20.0, jitter_prob=1.0, backend="sdpa")
    return ReconstructionTransformer(8, **{**options, **switches})


def by_hand_steps(model, x, lr, clip, weight=1.0, n=1):
    """The expected steps, written out: loss on the clean x, SGD, the gradient's norm clipped to `clip`."""
    m = copy.deepcopy(model)
    for _ in range(n):
        loss = F.mse_loss(m(x), x) * weight
        grads = torch.autograd.grad(loss, list(m.parameters()))
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6)) if clip else 1.0
        with torch.no_grad():
            for p, g in zip(m.parameters(), grads):
                p -= lr * factor * g
    return loss.item(), dict(m.named_parameters())


def check_step(expect, student, model, x, given, lr=0.1, clip=0.0, weight=1.0, n=1):
    loss, params = by_hand_steps(model, x, lr, clip, weight, n)
    losses, after = student("probes.steps", model, x, lr, clip, weight, n)
    got = losses[-1]
    if not isinstance(got, torch.Tensor) or got.requires_grad:
        expect.fail("train_step's return", "the loss as a tensor without a graph (detached)", repr(got)[:80], given)
    expect.close(got.reshape(()), torch.tensor(loss), "the loss train_step returns", given)
    for name, e in params.items():
        expect.close(after["state"][name], e, f"parameter {name} after the step", given)


@pytest.mark.points(3)
def test_the_loss_is_the_mse_to_the_clean_input_and_one_optimizer_step_is_taken(expect, student):
    model, x = probes.NoisyConv().train(), torch.randn(4, 3, 5, 5)
    check_step(expect, student, model, x, "a 1x1 conv that adds 0.5 to its input in training mode; x (4, 3, 5, 5); "
               "SGD lr 0.1")


@pytest.mark.points(2)
def test_the_input_is_jittered_in_training_mode_only(expect, student):
    net, tokens = transformer(), torch.randn(2, 12, 8)
    expect.equal(student("probes.same_object", JITTER, 1, net.eval(), tokens, patch=STAND_IN), True,
                 "jitter_in_training in eval mode: the tokens themselves", "eval(), jitter_scale=20")
    jittered = student(JITTER, net.train(), tokens, patch=STAND_IN)
    expect.equal(isinstance(jittered, torch.Tensor) and tuple(jittered.shape) == (2, 12, 8), True,
                 "jitter_in_training in training mode: tokens of the same shape", "train(), jitter_scale=20")
    expect.equal(torch.equal(jittered, tokens), False, "jitter_in_training in training mode: tokens changed by "
                 "feature_jitter", "train(), jitter_scale=20")


### BEGIN HIDDEN TESTS
@pytest.mark.points(3, category="gradient clipping")
def test_the_gradient_norm_is_clipped_to_grad_clip(expect, student):
    model, x = probes.NoisyConv().train(), 10 * torch.randn(4, 3, 5, 5)  # large inputs: a large gradient
    check_step(expect, student, model, x, "x (4, 3, 5, 5) * 10, SGD lr 0.1, grad_clip 0.5", clip=0.5)


@pytest.mark.points(2, category="one step after another")
def test_gradients_of_an_earlier_step_do_not_add_up(expect, student):
    model, x = probes.NoisyConv().train(), torch.randn(4, 3, 5, 5)
    check_step(expect, student, model, x, "the second of two steps on the same batch, SGD lr 0.1", n=2)


@pytest.mark.points(1, category="the loss weight")
def test_the_loss_is_weighted(expect, student):
    model, x = probes.NoisyConv().train(), torch.randn(2, 3, 4, 4)
    check_step(expect, student, model, x, "weight 0.25 (a rank's share of the batch)", weight=0.25)


@pytest.mark.points(3, category="the model's own jitter settings")
def test_the_jitter_is_the_models_own_and_follows_its_settings(expect, student):
    net, tokens = transformer(jitter_scale=7.0, jitter_prob=0.5), torch.randn(2, 12, 8)
    out, seen = student("probes.jitter_calls_of", JITTER, net.train(), tokens, patch=STAND_IN)
    expect.equal(seen, [(7.0, 0.5)], "feature_jitter's (scale, prob) in training mode", "jitter_scale=7, jitter_prob=0.5")
    expect.close(out, tokens + 1, "jitter_in_training in training mode: feature_jitter's result", "train()")
    _, seen = student("probes.jitter_calls_of", JITTER, net.eval(), tokens, patch=STAND_IN)
    expect.equal(seen, [], "calls of feature_jitter in eval mode", "eval()")
### END HIDDEN TESTS
