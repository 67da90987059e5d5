"""Anomaly maps and image scores (uniad_mini/scoring.py, paper Sec. 3.5), each against an independent reference."""
import numpy as np
import pytest
import torch

from uniad_mini.scoring import anomaly_map, image_score, smooth


def test_anomaly_map_is_channel_l2_upsampled_bilinearly_with_align_corners():
    rec, feats = torch.randn(2, 5, 4, 3, dtype=torch.float64), torch.randn(2, 5, 4, 3, dtype=torch.float64)
    m = anomaly_map(rec, feats, (10, 7))
    grid = ((rec - feats) ** 2).sum(1).sqrt().numpy()  # (2, 4, 3): the L2 error per token
    # align_corners: output pixel y samples the token grid at y * (h - 1) / (H - 1), linearly in each direction
    expected = np.empty((2, 10, 7))
    for y in range(10):
        for x in range(7):
            sy, sx = y * 3 / 9, x * 2 / 6
            y0, x0 = min(int(sy), 2), min(int(sx), 1)
            fy, fx = sy - y0, sx - x0
            expected[:, y, x] = ((1 - fy) * (1 - fx) * grid[:, y0, x0] + (1 - fy) * fx * grid[:, y0, x0 + 1]
                                 + fy * (1 - fx) * grid[:, y0 + 1, x0] + fy * fx * grid[:, y0 + 1, x0 + 1])
    torch.testing.assert_close(m, torch.from_numpy(expected))


def test_image_score_is_max_of_16x16_average_pool():
    maps = torch.rand(2, 40, 40)
    brute = torch.tensor([max(maps[b, i : i + 16, j : j + 16].mean() for i in range(25) for j in range(25)) for b in range(2)])
    torch.testing.assert_close(image_score(maps), brute)


@pytest.mark.parametrize("sigma", [0.7, 1.3, 4.0])
def test_map_smoothing_is_scipys_gaussian_filter(sigma):
    from scipy.ndimage import gaussian_filter  # the oracle (a test dependency, through scikit-learn)

    maps = torch.rand(2, 40, 33, dtype=torch.float64)
    # torch's "reflect" border (d c b | a b c d) is SciPy's "mirror"; both cut the kernel at int(4 sigma + 0.5)
    expected = [gaussian_filter(m.numpy(), sigma, mode="mirror", truncate=4.0) for m in maps]
    torch.testing.assert_close(smooth(maps, sigma), torch.tensor(np.stack(expected)))
    assert smooth(maps, 0.0) is maps  # 0: the paper's maps, untouched
