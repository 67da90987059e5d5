"""The neighbor mask's geometry (uniad_mini/neighbors.py, paper Sec. 3.3), against a brute-force loop."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from uniad_mini.neighbors import neighbor_mask


def brute_force_mask(h, w, kh, kw):
    m = torch.zeros(h * w, h * w, dtype=torch.bool)
    for q in range(h * w):
        for k in range(h * w):
            m[q, k] = abs(q // w - k // w) <= kh // 2 and abs(q % w - k % w) <= kw // 2
    return m


@given(h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 7), kw=st.integers(1, 7))
def test_neighbor_mask_matches_brute_force(h, w, kh, kw):
    if h // 2 <= kh // 2 and w // 2 <= kw // 2:
        with pytest.raises(ValueError, match="blocks every key"):
            neighbor_mask(h, w, (kh, kw))
    else:
        m = neighbor_mask(h, w, (kh, kw))
        assert torch.equal(m, brute_force_mask(h, w, kh, kw))
        assert not m.all(dim=1).any()  # every query sees at least one key


def test_neighbor_mask_blocks_the_query_itself():
    assert neighbor_mask(14, 14, 7).diagonal().all()


def test_interior_query_sees_147_keys_and_corner_sees_180():
    visible = (~neighbor_mask(14, 14, 7)).sum(dim=1)
    assert visible[7 * 14 + 7] == 196 - 49
    assert visible[0] == 196 - 16 == 180


def test_grid_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="use a smaller window or a larger grid"):
        neighbor_mask(7, 7, 7)
