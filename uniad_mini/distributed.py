"""Training on several processes (paper Sec. 4.1: the authors trained UniAD with DistributedDataParallel on 8 GPUs).

Launched with `torchrun`, every process ("rank") runs the same program. This module holds the few pieces
that differ from a single process; the training loop itself stays `training.train`:

    init_from_env(device)  RANK / WORLD_SIZE set by torchrun -> process group (NCCL on GPUs, gloo on CPU)
    cache_features_sharded rank r runs the backbone on items r, r + W, r + 2W, ... of the data set, then every
                           rank gathers every shard: all ranks hold the same full Cache, in the data set's order
    is_main()              rank 0: the one that prints progress and writes checkpoints

Why gather the features instead of sharding them for good: they are small (192 x 14 x 14 floats, 150 kB per
image), and with the full set on every rank the two things a single process derives from it come out
bit-identical -- the per-channel statistics (computed from the gathered tensor, in the same order) and the
epoch's batch order (`training.batch_order(N, seed, epoch)`). Each step, rank r then trains on its slice of the
same global batch a single process would use (see `training.train`); DistributedDataParallel averages the
gradients, so the update is the single-process update up to float summation order. docs/distributed.md says
what is exact and what is not (feature jitter and dropout draw different noise on each rank).
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from . import features as _features
from .features import Cache
from .errors import DataError


def init_from_env(device=None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) of this process; joins the process group when launched by torchrun.

    device: "cpu", "cuda" or a torch.device; None or "auto": CUDA when torch sees a GPU, else the CPU.
    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Without them this is a plain
    single process: (0, 1, device). With them: on CUDA, NCCL and the GPU `cuda:LOCAL_RANK` (one process per
    GPU); on the CPU, gloo. Call `shutdown()` at the end.
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for, but torch sees no GPU on this machine; use the CPU (gloo)")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    return rank, world, device


def shutdown():
    """Leave the process group (a no-op in a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_distributed() -> bool:
    """True when more than one process trains together."""
    return world_size() > 1


def is_main() -> bool:
    """True on rank 0 and in a single process: the rank that prints and writes files."""
    return rank() == 0


def _comm_device() -> torch.device:
    """Where tensors must be for a collective: the current GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Rank r holds rows r, r + W, r + 2W, ... of an (n, ...) tensor; every rank gets all n rows, in order.

    The shards differ in length by at most one row; they are padded to the longest for `all_gather`.
    The result is on the device `local` was on.
    """
    W = world_size()
    if W == 1:
        return local
    longest = -(-n // W)  # ceil: rank 0's shard
    dev = _comm_device()
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: len(local)] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(W)]
    dist.all_gather(parts, padded)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=dev)
    for r, part in enumerate(parts):
        out[r::W] = part[: len(range(r, n, W))]  # interleave back: global row r + k W is rank r's row k
    return out.to(local.device)


def gather_list(local: list, n: int) -> list:
    """`gather_rows` for Python lists (class names, paths)."""
    W = world_size()
    if W == 1:
        return local
    parts = [None] * W
    dist.all_gather_object(parts, local)
    out = [None] * n
    for r, part in enumerate(parts):
        out[r::W] = part
    return out


class _Shard(torch.utils.data.Dataset):
    """Items r, r + W, r + 2W, ... of a data set (what `cache_features_sharded` runs the backbone on)."""

    def __init__(self, data, r: int, W: int):
        self.data, self.indices = data, range(r, len(data), W)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.data[self.indices[i]]


def cache_features_sharded(extractor, data, batch_size: int = 16, progress: bool = True, desc: str = "features") -> Cache:
    """`features.cache_features`, with the backbone work split over the ranks; every rank gets the full Cache.

    In a single process this is `features.cache_features` itself. With W ranks each runs the backbone on
    1/W of the items (rank 0 shows the progress of its share), then the shards are gathered, so the result
    equals a single process's Cache, item for item (features to float tolerance across devices).
    """
    W = world_size()
    if W == 1:
        return _features.cache_features(extractor, data, batch_size, progress, desc)
    if len(data) < W:
        raise ValueError(f"the data set has {len(data)} items, fewer than the {W} processes; use fewer processes")
    shard = _Shard(data, rank(), W)
    shard.problems = list(getattr(data, "problems", [])) if is_main() else []  # the indexing's, once
    try:
        local, problems = _features.cache_features(extractor, shard, batch_size, progress and is_main(), desc), []
    except DataError as e:
        local, problems = None, e.problems
    everyone = [p for part in gather_objects(problems) for p in part]  # every rank's problems, on every rank
    if everyone:
        raise DataError.of(list(dict.fromkeys(everyone)))
    n = len(data)
    return Cache(gather_rows(local.features, n), gather_rows(local.labels, n), gather_rows(local.masks, n),
                 gather_list(local.classes, n), gather_list(local.paths, n))


def check_same_everywhere(feats: torch.Tensor):
    """Raise on every rank when the ranks were handed different training sets (count or checksum)."""
    mine = torch.tensor([feats.shape[0], feats.double().sum().item()], dtype=torch.float64, device=_comm_device())
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    if any(not torch.equal(p, parts[0]) for p in parts):
        raise ValueError("the processes hold different training features; every rank must pass the full, "
                         "identical set (distributed.cache_features_sharded gathers it)")


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (e.g. the random-number states for a checkpoint)."""
    parts = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def free_port() -> int:
    """A free TCP port on the loopback address, for MASTER_PORT when launching processes by hand."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
