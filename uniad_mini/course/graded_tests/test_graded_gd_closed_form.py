"""Graded: the analysis assignment, the closed-form trajectory of full-batch gradient descent on one linear layer
(the identical shortcut, paper Sec. 3.1; notebook 02), `shortcut.identity.gd_factors`. Implements no part of the
paper itself. The measured side is a linear layer trained here, step by step, with plain gradient descent."""
import pytest
import torch

from uniad_mini.shortcut.identity import direction_energy, spectrum

pytestmark = pytest.mark.by_hand(why="the closed form, one broadcast power")


def tokens(seed=0, m=400, c=6):
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.05])[:c]
    x = torch.randn(m, c, generator=g, dtype=torch.float64) * scales  # (M, C), a spread of directions
    return x - x.mean(0)


def measured_gd(x, lr, steps):
    """||W_k x - x||^2 averaged over the tokens and ||W_k - I||_F / ||I||_F for k = 0 .. steps, from W = 0."""
    c = x.shape[1]
    W = torch.zeros(c, c, dtype=torch.float64, requires_grad=True)
    errors, distances = [], []
    for _ in list(range(steps + 1)):
        with torch.no_grad():
            errors.append(((x @ W.T - x) ** 2).sum(1).mean().item())
            distances.append(((W - torch.eye(c)).norm() / c ** 0.5).item())
        loss = ((x @ W.T - x) ** 2).mean()  # the project's loss: mean over tokens and channels
        (grad,) = torch.autograd.grad(loss, W)
        with torch.no_grad():
            W -= lr * grad
    return torch.tensor(errors), torch.tensor(distances)


@pytest.mark.points(3)
def test_the_factors_are_one_at_step_zero_and_shrink_with_each_step(expect, student):
    lam = torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    f = student("shortcut.identity.gd_factors", lam, 0.1, [0, 1, 10])
    expect.equal(tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__, (3, 3), "the factors' shape",
                 "lam (3,), steps [0, 1, 10]")
    expect.close(f[0], torch.ones(3, dtype=torch.float64), "the factors at step 0 (W = 0: the residual is x)",
                 "lam [4, 1, 0.25], lr 0.1")
    expect.equal(bool((f[2] < f[1]).all() and (f[1] < 1).all()), True, "every factor shrinking with the steps",
                 "lam [4, 1, 0.25], lr 0.1, steps 0, 1, 10")


### BEGIN HIDDEN TESTS
@pytest.mark.points(4, category="against measured gradient descent")
def test_the_closed_form_follows_measured_gradient_descent(expect, student):
    x = tokens(0)
    lam, U = spectrum(x)
    lr, steps = 0.5, 60
    errors, distances = measured_gd(x, lr, steps)
    closed = student("shortcut.identity.gd_trajectory", lam, lr, list(range(steps + 1)), {"x": direction_energy(U, x)})
    predicted = torch.tensor([r["x_error"] for r in closed], dtype=torch.float64)
    expect.close(predicted, errors, "the mean token error after k steps, closed form against measured GD",
                 "400 tokens, C = 6, lr 0.5, 60 steps", rtol=1e-6, atol=1e-9)
    expect.close(torch.tensor([r["identity_distance"] for r in closed], dtype=torch.float64), distances,
                 "||W_k - I|| / ||I|| after k steps, closed form against measured GD", "lr 0.5, 60 steps",
                 rtol=1e-6, atol=1e-9)


@pytest.mark.points(3, category="many steps")
def test_the_rarest_direction_is_learnt_last(expect, student):
    lam = torch.tensor([9.0, 1.0, 0.01], dtype=torch.float64)
    f = student("shortcut.identity.gd_factors", lam, 0.3, [100])[0]
    expected = (1 - 2 * 0.3 * lam / 3) ** 200
    expect.close(f, expected, "the factors after 100 steps", "lam [9, 1, 0.01], lr 0.3, C = 3", rtol=1e-9)
### END HIDDEN TESTS
