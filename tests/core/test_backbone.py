"""The hand-written EfficientNet reads the shipped ImageNet weights correctly, and the feature stacking is UniAD's."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from uniad_mini.backbone import EfficientNet, feature_stack, load_backbone

DAISY = 985  # ImageNet class index


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("lite0")


def flower(crop: bool, size=224):
    sklearn = pytest.importorskip("sklearn")
    path = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "flower.jpg")
    im = Image.open(path).convert("RGB")
    if crop:  # the centre square
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    im = im.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255)[None]  # (1, 3, S, S)


@pytest.mark.parametrize("crop", [True, False], ids=["centre-crop", "squashed"])
def test_lite0_classifies_sklearn_flower_as_daisy(lite0, crop):
    # Only right weights, TF "SAME" padding and the [-1, 1] input range together give the daisy both ways;
    # ImageNet mean/std, the other common choice, misclassifies the squashed photo.
    with torch.no_grad():
        logits = lite0(flower(crop))
    assert logits.argmax().item() == DAISY


def test_imagenet_mean_std_is_not_what_lite0_was_trained_with(lite0):
    from uniad_mini.backbone import IMAGENET_MEAN, IMAGENET_STD

    wrong = EfficientNet("lite0")
    wrong.load_state_dict(lite0.state_dict())
    wrong.eval()
    wrong.mean, wrong.std = IMAGENET_MEAN, IMAGENET_STD
    with torch.no_grad():
        assert wrong(flower(crop=False)).argmax().item() != DAISY


def test_lite0_checkpoint_loads_strictly_with_every_key(lite0):
    from uniad_mini.backbone import lite_checkpoint

    keys = set(torch.load(lite_checkpoint(), weights_only=True))
    assert keys == set(lite0.state_dict())  # the classifier head included
    assert "_fc.weight" in keys


def test_backbone_is_frozen_and_in_eval_mode(lite0):
    assert not any(p.requires_grad for p in lite0.parameters())
    assert not lite0.training


# Parameter counts published with the reference implementations (efficientnet_pytorch for B0 / B4, the
# TensorFlow EfficientNet-Lite release for Lite0 / Lite1 / Lite2: 4.65M / 5.4M / 6.1M, the exact counts those of the
# shipped checkpoints): a block wired differently, a missing squeeze-excitation or a wrong width changes them.
@pytest.mark.parametrize("variant,channels,se,params", [("b0", [16, 24, 40, 112], True, 5_288_548),
                                                        ("b4", [24, 32, 56, 160], True, 19_341_616),
                                                        ("lite0", [16, 24, 40, 112], False, 4_652_008),
                                                        ("lite1", [16, 24, 40, 112], False, 5_416_680),
                                                        ("lite2", [16, 24, 48, 120], False, 6_092_072)])
def test_efficientnet_has_the_published_parameter_count_and_taps(variant, channels, se, params):
    net = EfficientNet(variant).eval()
    assert sum(p.numel() for p in net.parameters()) == params
    assert any("_se_reduce" in k for k in net.state_dict()) == se
    with torch.no_grad():
        taps = net.tap_features(torch.rand(1, 3, 64, 64))
    assert [t.shape[1] for t in taps] == channels == net.tap_channels
    assert [64 // t.shape[-1] for t in taps] == [2, 4, 8, 16]  # the stage ends at strides 2, 4, 8, 16


def test_b4_has_the_papers_272_stacked_channels():
    net = EfficientNet("b4").eval()
    with torch.no_grad():
        f = feature_stack(net.tap_features(torch.rand(1, 3, 224, 224)))
    assert f.shape == (1, 272, 14, 14)


def test_feature_stack_taps_strides_2_4_8_16_resized_align_corners(lite0):
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        taps = lite0.tap_features(x)
    assert [t.shape[-1] for t in taps] == [112, 56, 28, 14]
    f = feature_stack(taps)
    assert f.shape == (2, 192, 14, 14)
    expected = F.interpolate(taps[0], size=(14, 14), mode="bilinear", align_corners=True)
    torch.testing.assert_close(f[:, :16], expected)
    torch.testing.assert_close(f[:, -112:], taps[-1])


def test_unknown_variant_and_missing_checkpoint_are_clear_errors():
    with pytest.raises(ValueError, match="unknown EfficientNet variant"):
        EfficientNet("b9")
    with pytest.raises(ValueError, match="pass checkpoint=PATH"):
        load_backbone("b4")
