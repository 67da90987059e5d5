"""Graded: one remedy of the identical shortcut, feature jittering (paper Sec. 3.4, Eq. 4) around a grid
reconstructor, `shortcut.copying.Jittered.forward`. Implements no part of the paper itself. The inner model is a
plain PyTorch module whose every number the test can follow (nn.Identity, or a 1 x 1 convolution that doubles its
input), so the noise the part adds can be read off its output."""
import pytest
import torch

from uniad_mini.shortcut.copying import Jittered

pytestmark = pytest.mark.by_hand(why="Eq. 4 on a grid, in a few lines of tensor code")
FORWARD = "shortcut.copying.Jittered.forward"


def doubling(c):
    """A 1 x 1 convolution C -> C with weight 2 I and no bias: y = 2 x."""
    conv = torch.nn.Conv2d(c, c, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(2 * torch.eye(c)[:, :, None, None])
    return conv


@pytest.mark.points(2)
def test_in_eval_mode_or_with_scale_0_the_inner_model_reads_the_input_itself(expect, student):
    x = torch.randn(2, 8, 5, 6)
    for net, given in ((Jittered(torch.nn.Identity(), 7.0).eval(), "eval(), scale 7"),
                       (Jittered(torch.nn.Identity(), 0.0).train(), "train(), scale 0")):
        expect.equal(student("probes.same_object", FORWARD, 1, net, x), True,
                     "the very input tensor, handed to the inner model unchanged", f"x (2, 8, 5, 6), {given}")
    out = student(FORWARD, Jittered(torch.nn.Identity(), 7.0).train(), x, seed=0)
    expect.equal(isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 8, 5, 6), True,
                 "in training mode: a grid of the input's shape", "train(), scale 7")
    expect.equal(torch.equal(out, x), False, "in training mode: an input changed by noise", "train(), scale 7")


@pytest.mark.points(2)
def test_in_training_mode_the_noise_has_std_scale_times_the_tokens_norm_over_c(expect, student):
    torch.manual_seed(0)
    a = torch.randn(64)
    x = a[None, :, None, None].repeat(1, 1, 100, 100)  # (1, 64, 100, 100): one token, 10000 times
    noise = student(FORWARD, Jittered(torch.nn.Identity(), 20.0).train(), x, seed=0) - x
    expected = 20.0 * a.norm().item() / 64
    if abs(noise.std().item() / expected - 1) > 0.02:
        expect.fail("the noise's standard deviation", f"{expected:.4g} (= scale ||x_i|| / C)", f"{noise.std().item():.4g}",
                    "one token (C = 64) repeated on a 100 x 100 grid, scale 20")


### BEGIN HIDDEN TESTS
@pytest.mark.points(2, category="the noise per token")
def test_the_noise_follows_each_tokens_own_norm(expect, student):
    torch.manual_seed(1)
    a = torch.randn(16)
    x = a[None, :, None, None].repeat(2, 1, 60, 60)  # (2, 16, 60, 60)
    x[:, :, 30:] *= 10  # the lower half of every grid: tokens of norm 10 ||a||
    x[1, :, :, :5] = 0.0  # and a few zero tokens
    noise = student(FORWARD, Jittered(torch.nn.Identity(), 5.0).train(), x, seed=1) - x
    small, large = noise[0, :, :30].std().item(), noise[0, :, 30:].std().item()
    if abs(large / small - 10) > 0.3:
        expect.fail("noise std of the tokens of norm 10 ||a|| over those of norm ||a||", "10", f"{large / small:.3g}",
                    "x (2, 16, 60, 60), scale 5")
    expect.equal(bool((noise[1, :, :, :5] == 0).all()), True, "the noise on tokens that are zero (norm 0)",
                 "x (2, 16, 60, 60) with zero tokens, scale 5")


@pytest.mark.points(2, category="the channels are axis 1 of a grid")
def test_every_channel_of_a_token_gets_noise_of_the_same_size(expect, student):
    a = torch.tensor([4.0, 1.0, 0.25, 0.0, 2.0, 0.5])  # channels of very different sizes
    x = a[None, :, None, None].repeat(1, 1, 90, 120)  # (1, 6, 90, 120): C, h and w all different
    noise = student(FORWARD, Jittered(torch.nn.Identity(), 3.0).train(), x, seed=2) - x
    got = noise[0].flatten(1).std(dim=1)  # (6,) the noise's std in each channel
    expected = torch.full((6,), 3.0 * a.norm().item() / 6)
    expect.close(got, expected, "the noise's std per channel (the same for every channel: scale ||x_i|| / C)",
                 "one token [4, 1, 0.25, 0, 2, 0.5] on a 90 x 120 grid, scale 3", rtol=0.03)


@pytest.mark.points(2, category="the noise enters the inner model")
def test_the_inner_model_reads_the_noisy_input_and_the_noise_is_fresh_each_call(expect, student):
    torch.manual_seed(3)
    a = torch.randn(32)
    x = a[None, :, None, None].repeat(2, 1, 50, 50)  # (2, 32, 50, 50)
    out = student(FORWARD, Jittered(doubling(32), 10.0).train(), x, seed=3)  # 2 (x + noise) if the noise goes in
    noise = out / 2 - x
    expected = 10.0 * a.norm().item() / 32
    if abs(noise.std().item() / expected - 1) > 0.03:
        expect.fail("(output / 2 - x)'s std with an inner model y = 2 x", f"{expected:.4g} (the noise enters the "
                    "inner model)", f"{noise.std().item():.4g}", "x (2, 32, 50, 50), scale 10")
    first, second = student("probes.two_passes", Jittered(torch.nn.Identity(), 10.0).train(), x, seed=4)
    expect.equal(torch.equal(first, second), False, "two calls in training mode: different noise", "scale 10")
### END HIDDEN TESTS
