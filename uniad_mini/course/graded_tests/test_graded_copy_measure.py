"""Graded: the copy measures of one output token from its Jacobian (the identical shortcut, paper Sec. 3.1),
`shortcut.identity.copy_measures`. Implements no part of the paper itself. The Jacobians are built here with a known
answer (a copy, a token that cannot reach itself, half a copy, a block of rank r), and once taken through a model
whose Jacobian is known (a 1 x 1 convolution with weight W: J_ii = W, every other block 0)."""
import pytest
import torch

pytestmark = pytest.mark.by_hand(why="three norms of slices of J, tensor operations on all of it at once")
PART = "shortcut.identity.copy_measures"
KEYS = ("identity_distance", "self_norm", "self_share")


def values(expect, got, given: str) -> torch.Tensor:
    """The three measures of an answer as a float64 tensor, in the order of KEYS (a clear failure otherwise)."""
    if not isinstance(got, dict) or any(k not in got for k in KEYS):
        expect.fail("copy_measures' result", f"a dict with the keys {', '.join(KEYS)}",
                    sorted(got) if isinstance(got, dict) else type(got).__name__, given)
    try:
        return torch.tensor([float(got[k]) for k in KEYS], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        expect.fail("copy_measures' values", "three numbers", repr(got)[:120], given)


def jacobian(c=6, n=9, seed=0):
    """A random Jacobian J (C, N, C) of one output token: every block J_ij filled."""
    return torch.randn(c, n, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.points(2)
def test_a_copy_is_0_from_the_identity_with_all_its_sensitivity_on_itself(expect, student):
    J = torch.zeros(6, 9, 6)
    J[:, 4] = torch.eye(6)  # y_i = x_i: the block on itself is I, every other block 0
    got = values(expect, student(PART, J, 4), "J (6, 9, 6), J_ii = I at i = 4, other blocks 0")
    expect.close(got, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64),
                 "(identity_distance, self_norm, self_share) of a copy", "J_ii = I, other blocks 0")


@pytest.mark.points(2)
def test_a_token_that_does_not_reach_itself_is_1_from_the_identity(expect, student):
    J = jacobian()
    J[:, 2] = 0.0  # y_i does not depend on x_i at all; every other block random
    got = values(expect, student(PART, J, 2), "J (6, 9, 6) random, J_ii = 0 at i = 2")
    expect.close(got, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                 "(identity_distance, self_norm, self_share) when x_i does not reach y_i", "J_ii = 0")


### BEGIN HIDDEN TESTS
def by_hand(J, i, rows=None):
    """The measures, written out block by block in float64."""
    J = J.double()
    eye = torch.eye(J.shape[-1], dtype=torch.float64)
    eye = eye if rows is None else eye[rows]
    energy = [J[:, j].pow(2).sum() for j in range(J.shape[1])]
    return torch.stack([(J[:, i] - eye).norm() / eye.norm(), J[:, i].norm() / eye.norm(),
                        energy[i] / sum(energy)])


@pytest.mark.points(1, category="half a copy")
def test_half_a_copy_shares_its_sensitivity_with_another_token(expect, student):
    J = torch.zeros(8, 5, 8)
    J[:, 1], J[:, 3] = 0.5 * torch.eye(8), 0.5 * torch.eye(8)  # y_i = (x_i + x_j) / 2
    got = values(expect, student(PART, J, 1), "J (8, 5, 8), J_ii = J_ij = I / 2")
    expect.close(got, torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64),
                 "(identity_distance, self_norm, self_share) of y_i = (x_i + x_j) / 2", "J_ii = J_ij = I / 2")


@pytest.mark.points(2, category="the rank bound")
def test_a_block_of_rank_r_is_at_least_sqrt_1_minus_r_over_c_from_the_identity(expect, student):
    g = torch.Generator().manual_seed(1)
    C, r, i = 12, 3, 6
    Q = torch.linalg.qr(torch.randn(C, r, generator=g))[0]  # (C, r) orthonormal columns
    J = jacobian(C, 10, seed=2)
    J[:, i] = Q @ Q.T  # the projection onto r directions: the closest rank-r matrix to I
    got = values(expect, student(PART, J, i), "J (12, 10, 12), J_ii the projection onto 3 directions")
    bound = (1 - r / C) ** 0.5
    expect.close(got[:1], torch.tensor([bound], dtype=torch.float64),
                 "identity_distance of a rank-3 projection on C = 12 (the bound sqrt(1 - r / C))", "C = 12, r = 3")
    expect.close(got, by_hand(J, i), "(identity_distance, self_norm, self_share)", "J_ii a rank-3 projection")
    for draw in (1, 2):
        J[:, i] = torch.randn(C, r, generator=g) @ torch.randn(r, C, generator=g)  # any block of rank 3
        got = values(expect, student(PART, J, i), f"J_ii = A B^T of rank 3 (draw {draw})")
        if got[0] < bound - 1e-6:
            expect.fail("identity_distance of a block of rank 3 on C = 12", f">= {bound:.6f}", f"{got[0]:.6f}",
                        "J_ii = A B^T, A (12, 3), B (12, 3)")
        expect.close(got, by_hand(J, i), "(identity_distance, self_norm, self_share)", "J_ii = A B^T of rank 3")


@pytest.mark.points(1, category="a subset of output channels")
def test_with_rows_the_identity_is_those_rows_of_i(expect, student):
    rows = torch.tensor([0, 3, 5])
    J = jacobian(8, 7, seed=5)[rows]  # (3, 7, 8): output channels 0, 3 and 5 only
    J[:, 2] = torch.eye(8)[rows]
    J[:, [0, 1, 3, 4, 5, 6]] = 0.0
    got = values(expect, student(PART, J, 2, rows), "J (3, 7, 8) of rows [0, 3, 5], a copy")
    expect.close(got, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64), "the measures of a copy, on 3 rows",
                 "rows [0, 3, 5], J_ii = those rows of I")
    J = jacobian(8, 7, seed=6)[rows]
    got = values(expect, student(PART, J, 2, rows), "J (3, 7, 8) random, rows [0, 3, 5]")
    expect.close(got, by_hand(J, 2, rows), "(identity_distance, self_norm, self_share) on 3 rows",
                 "J (3, 7, 8) random, rows [0, 3, 5]")


@pytest.mark.points(1, category="through a model whose Jacobian is known")
def test_jacobian_identity_of_a_1x1_convolution_measures_its_weight(expect, student):
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(6, 6, 1, bias=False)  # y_i = W x_i at every position: J_ii = W, J_ij = 0
    W = conv.weight.detach()[:, :, 0, 0].double()
    x = torch.randn(2, 6, 5, 5)
    got = values(expect, student("shortcut.identity.jacobian_identity", conv, x, ((2, 2), (0, 4))),
                 "jacobian_identity of a 1 x 1 conv (6 -> 6), x (2, 6, 5, 5), two positions")
    eye = torch.eye(6, dtype=torch.float64)
    expected = torch.stack([(W - eye).norm() / eye.norm(), W.norm() / eye.norm(), torch.tensor(1.0).double()])
    expect.close(got, expected, "(||W - I|| / ||I||, ||W|| / ||I||, 1) of a 1 x 1 convolution",
                 "a 1 x 1 conv with weight W", atol=1e-5)


@pytest.mark.points(1, category="at the model's size, without loops")
def test_the_measures_of_a_paper_sized_jacobian_are_computed_without_loops(expect, student):
    J = torch.randn(272, 196, 272, generator=torch.Generator().manual_seed(8))  # C = 272 channels, 14 x 14 tokens
    got = values(expect, student(PART, J, 100, lines=20), "J (272, 196, 272), i = 100")
    expect.close(got, by_hand(J, 100), "(identity_distance, self_norm, self_share)", "J (272, 196, 272), i = 100")
### END HIDDEN TESTS
