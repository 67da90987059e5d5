"""Graded: the neighbor mask (paper Sec. 3.3), `neighbors.neighbor_mask`. Implements no part of the paper itself."""
import pytest
import torch
from grader_probes import loop_mask  # the oracle: two loops over the tokens

pytestmark = pytest.mark.by_hand(why="the mask is a comparison of token coordinates")


def compare(expect, got, expected, given: str, w: int):
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
        expect.fail("neighbor_mask's result", "a bool tensor (True = blocked)", getattr(got, "dtype", type(got)), given)
    if got.shape != expected.shape:
        expect.fail("neighbor_mask's shape", tuple(expected.shape), tuple(got.shape), given)
    if not torch.equal(got, expected):
        q, k = (int(i) for i in (got != expected).nonzero()[0])
        expect.fail(f"query {q} at ({q // w}, {q % w}), key {k} at ({k // w}, {k % w})",
                    "blocked" if expected[q, k] else "visible", "blocked" if got[q, k] else "visible", given)


@pytest.mark.points(2)
def test_neighbor_mask_blocks_the_query_itself(expect, student):
    m = student("neighbors.neighbor_mask", 14, 14, 7)
    expect.equal(bool(m.diagonal().all()), True, "every token blocked for itself (the diagonal)", "h=w=14, window=7")


@pytest.mark.points(2)
def test_interior_query_sees_147_keys_and_corner_sees_180(expect, student):
    visible = (~student("neighbors.neighbor_mask", 14, 14, 7)).sum(dim=1)
    expect.equal(int(visible[7 * 14 + 7]), 147, "keys visible to the interior token (7, 7)", "h=w=14, window=7")
    expect.equal(int(visible[0]), 180, "keys visible to the corner token (0, 0)", "h=w=14, window=7")


### BEGIN HIDDEN TESTS
@pytest.mark.points(2, category="rectangular grids and windows")
@pytest.mark.parametrize("h, w, kh, kw", [(5, 5, 3, 3), (4, 7, 3, 5), (6, 3, 1, 1), (9, 8, 5, 3)])
def test_neighbor_mask_matches_two_loops_on_rectangular_grids_and_windows(expect, student, h, w, kh, kw):
    got = student("neighbors.neighbor_mask", h, w, (kh, kw))
    compare(expect, got, loop_mask(h, w, kh, kw), f"h={h}, w={w}, window=({kh}, {kw})", w)


@pytest.mark.points(1, category="even windows")
def test_an_even_window_reaches_as_far_as_the_odd_one_below_it(expect, student):
    got = student("neighbors.neighbor_mask", 6, 6, (4, 2))  # kh // 2 = 2 rows each way, kw // 2 = 1 column each way
    compare(expect, got, loop_mask(6, 6, 4, 2), "h=w=6, window=(4, 2)", 6)


@pytest.mark.points(1, category="at the model's size, without loops")
def test_the_mask_of_a_56_x_56_grid_is_computed_without_loops(expect, student):
    from uniad_mini.neighbors import neighbor_mask  # the instructor's, for the expected mask

    got = student("neighbors.neighbor_mask", 56, 56, 7, lines=60)  # 3136 tokens: a loop runs thousands of lines
    compare(expect, got, neighbor_mask(56, 56, 7), "h=w=56, window=7", 56)
### END HIDDEN TESTS
