"""Graded: feature jittering (paper Sec. 3.4, Eq. 4), `transformer.feature_jitter`. Implements no part of the paper."""
import pytest
import torch

pytestmark = pytest.mark.by_hand(why="Eq. 4 in a few lines of tensor code")


@pytest.mark.points(2)
def test_jitter_is_the_identity_when_off(expect, student):
    x = torch.randn(2, 6, 8)
    for scale, prob in ((0.0, 1.0), (-1.0, 1.0), (20.0, 0.0)):
        expect.equal(student("probes.same_object", "transformer.feature_jitter", 0, x, scale, prob), True,
                     "the very same tensor back when off", f"x (2, 6, 8), scale={scale}, prob={prob}")
    expect.equal(torch.equal(student("transformer.feature_jitter", x, 20.0, 1.0), x), False, "x changed when on",
                 "scale=20, prob=1")


@pytest.mark.points(2)
def test_jitter_noise_has_std_alpha_norm_over_c(expect, student):
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64).repeat(1, 20000, 1)  # one token repeated: many noise samples
    noise = student("transformer.feature_jitter", x, scale=20.0, seed=0) - x
    expected = 20.0 * x[0, 0].norm().item() / 64
    if abs(noise.std().item() / expected - 1) > 0.02:
        expect.fail("the noise's standard deviation", f"{expected:.4g} (= scale ||x|| / C)", f"{noise.std().item():.4g}",
                    "one token (C = 64) repeated 20000 times, scale=20")


### BEGIN HIDDEN TESTS
@pytest.mark.points(2, category="the noise per token")
def test_jitter_noise_follows_each_tokens_norm(expect, student):
    torch.manual_seed(0)
    a = torch.randn(64)
    x = torch.cat([a.repeat(10000, 1), 10 * a.repeat(10000, 1)])[None]  # (1, 20000, 64): norms |a| and 10 |a|
    noise = student("transformer.feature_jitter", x, scale=5.0, seed=0) - x
    small, large = noise[0, :10000].std().item(), noise[0, 10000:].std().item()
    if abs(large / small - 10) > 0.3:
        expect.fail("noise std of the tokens of norm 10|a| over those of norm |a|", "10", f"{large / small:.3g}",
                    "two groups of 10000 tokens, C = 64, scale=5")
    if abs(noise.mean().item()) > 0.05 * small:
        expect.fail("the noise's mean", "about 0", f"{noise.mean().item():.3g}", "scale=5")


@pytest.mark.points(2, category="the skip probability")
def test_jitter_prob_skips_whole_batches(expect, student):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    clean = 0
    for out in student("probes.repeat", "transformer.feature_jitter", 400, x, 20.0, prob=0.25, seed=0):
        changed = (out != x).any(dim=-1)  # (2, 5) per token
        if not (changed.all() or not changed.any()):
            expect.fail("tokens jittered in one call", "all of the batch or none", f"{int(changed.sum())} of 10",
                        "x (2, 5, 8), scale=20, prob=0.25")
        clean += not changed.any()
    if not 250 < clean < 350:
        expect.fail("calls that left x as it is, of 400", "about 300 (1 - prob)", clean, "prob=0.25")
### END HIDDEN TESTS
