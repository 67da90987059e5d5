"""Graded: the anomaly map and the image score (paper Sec. 3.5), `scoring.anomaly_map` and `image_score`.
Implements no part of the paper itself."""
import pytest
import torch


pytestmark = pytest.mark.by_hand(why="Sec. 3.5 in a few tensor operations")


@pytest.mark.points(2)
def test_anomaly_map_interpolates_between_tokens(expect, student):
    rec = torch.tensor([[[3.0, 6.0], [0.0, 5.0]], [[4.0, 8.0], [1.0, 12.0]]])[None]  # (1, 2, 2, 2): norms 5 10 / 1 13
    m = student("scoring.anomaly_map", rec, torch.zeros_like(rec), (3, 3))
    expected = torch.tensor([[5.0, 7.5, 10.0], [3.0, 7.25, 11.5], [1.0, 7.0, 13.0]])[None]
    expect.close(m, expected, "the 3 x 3 map", "rec (1, 2, 2, 2) with token norms 5, 10 / 1, 13; feats 0")


@pytest.mark.points(2)
def test_image_score_of_a_hot_square_and_a_hot_pixel(expect, student):
    maps = torch.zeros(3, 40, 40)
    maps[0, 10:26, 5:21] = 1.0  # a 16 x 16 square: some window covers it all
    maps[1, 20, 30] = 1.0  # one pixel: every window holding it averages 1/256
    expect.close(student("scoring.image_score", maps), torch.tensor([1.0, 1 / 256, 0.0]), "the scores",
                 "maps (3, 40, 40): a hot 16 x 16 square, a hot pixel, zeros")


### BEGIN HIDDEN TESTS
@pytest.mark.points(2, category="the map")
def test_anomaly_map_is_channel_l2_upsampled_with_align_corners(expect, student):
    torch.manual_seed(0)
    rec, feats = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    m = student("scoring.anomaly_map", rec, feats, (16, 16))
    grid = ((rec - feats) ** 2).sum(1).sqrt()  # (2, 4, 4)
    expect.equal(tuple(m.shape), (2, 16, 16), "the map's shape", "rec, feats (2, 5, 4, 4), size (16, 16)")
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        expect.close(m[(slice(None),) + corner], grid[(slice(None),) + corner], f"the map at the corner {corner}",
                     "align_corners keeps the corner tokens' errors")
    expect.close(m[:, 5, 5], grid[:, 1, 1], "the map at (5, 5), on the token (1, 1)", "16 / 4 grid: token j at 5 j")


@pytest.mark.points(2, category="the score")
def test_image_score_is_max_of_the_pool_x_pool_average(expect, student):
    torch.manual_seed(0)
    maps = torch.rand(2, 30, 27)
    brute = torch.tensor([max(maps[b, i : i + 16, j : j + 16].mean() for i in range(15) for j in range(12))
                          for b in range(2)])
    expect.close(student("scoring.image_score", maps), brute, "the scores", "maps (2, 30, 27) uniform random, pool 16")
    small = torch.tensor([max(maps[0, i : i + 5, j : j + 5].mean() for i in range(26) for j in range(23))])
    expect.close(student("scoring.image_score", maps[:1], pool=5), small, "the score with pool=5", "maps (1, 30, 27)")


@pytest.mark.points(2, category="at the model's size, without loops")
def test_a_224_x_224_map_and_its_score_are_computed_without_loops(expect, student):
    from uniad_mini.scoring import anomaly_map, image_score  # the instructor's, for the expected values

    torch.manual_seed(0)
    rec, feats = torch.randn(4, 272, 14, 14), torch.randn(4, 272, 14, 14)
    expect.close(student("scoring.anomaly_map", rec, feats, (224, 224), lines=40), anomaly_map(rec, feats, (224, 224)),
                 "the 224 x 224 maps", "rec, feats (4, 272, 14, 14)")
    maps = torch.rand(4, 224, 224)
    expect.close(student("scoring.image_score", maps, lines=40), image_score(maps), "the scores", "maps (4, 224, 224)")
### END HIDDEN TESTS
