"""Graded: multi-scale feature stacking (paper Sec. 3.1), `backbone.feature_stack`. Implements no part of the paper."""
import pytest
import torch
import torch.nn.functional as F

from uniad_mini.backbone import EfficientNet

pytestmark = pytest.mark.by_hand(why="resize each tap to the last one's grid, then concatenate")


@pytest.mark.points(2)
def test_b4_has_the_papers_272_stacked_channels(expect, student):
    torch.manual_seed(0)
    net = EfficientNet("b4").eval()
    with torch.no_grad():
        f = student("backbone.feature_stack", net.tap_features(torch.rand(1, 3, 224, 224)))
    expect.equal(tuple(f.shape), (1, 272, 14, 14), "the stacked features' shape", "EfficientNet-b4 taps of one 224 image")


### BEGIN HIDDEN TESTS
@pytest.mark.points(3, category="random taps")
def test_feature_stack_of_random_taps(expect, student):
    taps = [torch.randn(2, 3, 12, 16), torch.randn(2, 4, 6, 8), torch.randn(2, 5, 3, 4)]
    f = student("backbone.feature_stack", taps)
    given = "taps (2, 3, 12, 16), (2, 4, 6, 8), (2, 5, 3, 4)"
    expect.equal(tuple(f.shape), (2, 12, 3, 4), "the stacked shape", given)
    for i, (t, part) in enumerate(zip(taps, f.split([3, 4, 5], dim=1))):
        expected = F.interpolate(t, size=(3, 4), mode="bilinear", align_corners=True)
        expect.close(part, expected, f"the channels of tap {i}, resized", given)


@pytest.mark.points(1, category="corners")
def test_align_corners_keeps_the_corner_tokens(expect, student):
    taps = [torch.randn(1, 2, 9, 9), torch.randn(1, 2, 3, 3)]
    f = student("backbone.feature_stack", taps)
    expect.close(f[:, :2, -1, -1], taps[0][:, :, -1, -1], "the bottom-right token of tap 0", "taps (1, 2, 9, 9), (1, 2, 3, 3)")
### END HIDDEN TESTS
