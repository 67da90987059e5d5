"""Training on several processes (docs/distributed.md): two gloo processes on the CPU train the same model
as one process with the same global batch, and a resumed two-process run continues exactly."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from uniad_mini import SyntheticAD, UniAD, distributed
from uniad_mini.training import local_slice

# 9 training images, global batch 4: batches of 4, 4, 1 -- the last leaves rank 1 without a sample
TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64, batch_size=4, epochs=2)
# no per-rank noise, and fp32 products (bf16 rounding depends on how a batch is split): the only way to equal one process
EXACT = dict(jitter_scale=0.0, dropout=0.0, precision="fp32")


def train_data():
    return SyntheticAD("train", n_train=3)


class Stop(Exception):
    pass


def stop_after_1(model, epoch, loss):
    if epoch == 1:
        raise Stop


def interrupted_then_resumed(config: dict, data, out, name: str) -> UniAD:
    """Stop a 2-epoch run after epoch 1 (as Ctrl-C would), then resume it from its checkpoint."""
    try:
        UniAD(**config).fit(data, progress=False, checkpoint=out / f"{name}_half.pt", callback=stop_after_1)
    except Stop:
        pass
    torch.distributed.barrier()  # rank 0 has written the checkpoint
    return UniAD.load(out / f"{name}_half.pt").fit(data, progress=False, checkpoint=out / f"{name}_resumed.pt")


def _worker(rank: int, world: int, port: int, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu") == (rank, world, torch.device("cpu"))  # gloo, even beside a GPU
    try:
        model = UniAD(**TINY, **EXACT)
        # what `fit` does with a data set: each rank runs the backbone on its share, all gather the whole
        cache = distributed.cache_features_sharded(model.extractor, train_data(), progress=False)
        if distributed.is_main():
            torch.save({"paths": cache.paths, "features": cache.features}, out / "cache.pt")
        model.fit(cache, progress=False, checkpoint=out / "exact.pt")
        interrupted_then_resumed({**TINY, **EXACT}, cache, out, "exact")
        UniAD(**TINY).fit(cache, progress=False, checkpoint=out / "jitter.pt")  # default jitter: noise per rank
        interrupted_then_resumed(TINY, cache, out, "jitter")
    finally:
        distributed.shutdown()


pytestmark = pytest.mark.usefixtures("one_thread")  # one thread, here as in the workers (conftest)


@pytest.fixture(scope="module")
def single_cache():
    return UniAD(**TINY).cache(train_data(), progress=False)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, distributed.free_port(), out), nprocs=2, join=True)
    return out


def weights(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 3, 4, 7, 8])
def test_batch_slices_weigh_every_sample_of_the_global_batch_equally(world, n):
    batch = torch.arange(n)
    share = torch.zeros(n)
    for r in range(world):
        part, weight = local_slice(batch, r, world)
        share[part] += weight / len(part) / world  # what DDP's average gives each sample's MSE
    torch.testing.assert_close(share, torch.full((n,), 1 / n))


def test_a_plain_process_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rank, world, device = distributed.init_from_env()
    assert (rank, world) == (0, 1) and distributed.is_main() and not distributed.is_distributed()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert distributed.init_from_env("cpu") == (0, 1, torch.device("cpu"))


def test_sharded_feature_cache_equals_the_single_process_cache(two_process_runs, single_cache):
    single = single_cache
    gathered = torch.load(two_process_runs / "cache.pt", weights_only=True)
    assert gathered["paths"] == single.paths  # the data set's order, not rank by rank
    # the backbone saw other batches (and threads) on each rank: the same features up to float rounding
    torch.testing.assert_close(gathered["features"], single.features, atol=1e-4, rtol=1e-4)


def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(two_process_runs, single_cache):
    single = UniAD(**TINY, **EXACT).fit(single_cache, progress=False)
    ddp = weights(two_process_runs / "exact.pt")
    torch.testing.assert_close(ddp["feature_mean"], single.feature_mean)
    torch.testing.assert_close(ddp["feature_std"], single.feature_std)
    for name, value in single.transformer.state_dict().items():
        if name.endswith("k_proj.bias"):
            # the loss does not depend on a key bias (it shifts a query's logits by a constant, which softmax
            # ignores): its gradient is rounding noise, and Adam turns any noise into steps of up to ~lr
            assert (ddp["transformer"][name] - value).abs().max() < single.config.lr, name
        else:
            torch.testing.assert_close(ddp["transformer"][name], value, atol=1e-5, rtol=1e-5, msg=name)
    trained = UniAD(**TINY, **EXACT)
    trained.transformer.load_state_dict(ddp["transformer"])
    trained.feature_mean.copy_(ddp["feature_mean"]), trained.feature_std.copy_(ddp["feature_std"])
    feats = single_cache.features
    torch.testing.assert_close(trained.reconstruct(feats)[1], single.reconstruct(feats)[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ddp["train_state"]["history"], single.train_state["history"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["exact", "jitter"])
def test_a_resumed_two_process_run_equals_an_uninterrupted_one(two_process_runs, name):
    full, resumed = weights(two_process_runs / f"{name}.pt"), weights(two_process_runs / f"{name}_resumed.pt")
    assert resumed["train_state"]["history"] == full["train_state"]["history"]
    for key, value in full["transformer"].items():
        assert torch.equal(resumed["transformer"][key], value), key


def test_jitter_noise_differs_per_rank_so_it_is_not_the_exact_run(two_process_runs):
    jitter, exact = weights(two_process_runs / "jitter.pt"), weights(two_process_runs / "exact.pt")
    assert jitter["train_state"]["history"] != exact["train_state"]["history"]
    assert len(jitter["train_state"]["rng_per_rank"]) == 2
