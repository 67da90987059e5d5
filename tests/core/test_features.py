"""The frozen feature extractor and the feature cache (uniad_mini/features.py, paper Sec. 3.1): the stacked taps,
the per-channel statistics, and the cache as the data set's one read."""
import pytest
import torch

from uniad_mini import SyntheticAD, UniAD
from uniad_mini.features import Cache, cache_features, channel_stats, check_images, standardize
from uniad_mini.errors import DataError

TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64)


def test_features_are_the_stacked_backbone_taps():
    model = UniAD(**TINY, fast=False)  # the plain path; the fast path against it: tests/core/test_speedups.py
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():  # by hand: the four stage ends at strides 2, 4, 8, 16, each resized to 14 x 14 and stacked
        taps = model.extractor.backbone.tap_features(images)
        expected = torch.cat([torch.nn.functional.interpolate(t, size=(14, 14), mode="bilinear", align_corners=True)
                              for t in taps], dim=1)  # (2, 16 + 24 + 40 + 112, 14, 14)
    assert [t.shape[-1] for t in taps] == [112, 56, 28, 14]
    torch.testing.assert_close(model.features(images), expected)


def test_channel_statistics_and_standardisation_are_per_channel_over_samples_and_positions():
    feats = torch.randn(4, 3, 5, 5, dtype=torch.float64) * torch.tensor([1.0, 2.0, 5.0]).view(1, 3, 1, 1) + 7
    mean, std = channel_stats(feats)
    flat = feats.transpose(0, 1).reshape(3, -1)  # (C, N * h * w)
    torch.testing.assert_close(mean, flat.mean(1))
    torch.testing.assert_close(std, flat.std(1))
    z = standardize(feats, mean, std).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(z.mean(1), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(z.std(1), torch.ones(3, dtype=torch.float64))


class Counted:
    """A data set that counts how often each item is read; items in `bad` raise a DataError."""

    def __init__(self, data, bad=()):
        self.data, self.bad, self.reads = data, set(bad), []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads.append(i)
        if i in self.bad:
            raise DataError(f"item {i} is unreadable")
        return self.data[i]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_cache_reads_every_item_once_and_lists_every_problem_together(one_thread, workers):
    model = UniAD(**TINY)
    model.extractor.decode_workers = workers
    data = Counted(SyntheticAD("train", n_train=3, image_size=64), bad={1, 7})
    with pytest.raises(DataError) as e:
        cache_features(model.extractor, data, batch_size=4, progress=False)
    assert e.value.problems == ["item 1 is unreadable", "item 7 is unreadable"]
    assert sorted(data.reads) == list(range(len(data)))  # each once, the bad ones too
    good = Counted(SyntheticAD("train", n_train=3, image_size=64))
    cache = cache_features(model.extractor, good, batch_size=4, progress=False)
    assert isinstance(cache, Cache) and len(cache) == len(good) and sorted(good.reads) == list(range(len(good)))


@pytest.mark.parametrize("bad, match", [(torch.rand(2, 1, 32, 32), r"\(B, 3, H, W\)"), (torch.rand(0, 3, 32, 32), "empty"),
                                        (torch.rand(1, 3, 8, 8), "at least 16"), (torch.ones(1, 3, 32, 32) * 255, r"\[0, 1\]"),
                                        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float")])
def test_bad_images_are_refused_with_what_to_change(bad, match):
    with pytest.raises(ValueError, match=match):
        check_images(bad)
