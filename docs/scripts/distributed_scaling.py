"""Time per epoch of one process against several gloo processes on this CPU (the table in docs/distributed.md).

    python docs/scripts/distributed_scaling.py ../shared/data [--epochs 1] [--setups 1x2 2x1]

A setup PxT is P processes of T threads each (2x1: two gloo processes, one thread each), launched the way
torchrun would (RANK / WORLD_SIZE / MASTER_ADDR=127.0.0.1), training the default model on every class of the
MVTec-layout folder. It prints, per setup, the feature caching time (the backbone, split over the ranks) and
the mean training time per epoch. One-time start-up (importing, joining the group, DDP's first construction)
is left out of both.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from uniad_mini import distributed


def _worker(rank: int, world: int, threads: int, port: int, root: str, epochs: int, out: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    importlib.import_module("torch._dynamo")  # what DistributedDataParallel imports on first use: start-up

    from uniad_mini import MVTecAD, UniAD

    distributed.init_from_env("cpu")
    try:
        model, data = UniAD(), MVTecAD(root, "train")
        torch.distributed.barrier()
        start = time.perf_counter()
        cache = distributed.cache_features_sharded(model.extractor, data, progress=False)
        torch.distributed.barrier()
        cached = time.perf_counter()
        ends = []
        model.fit(cache, epochs=epochs, progress=False, callback=lambda *_: ends.append(time.perf_counter()))
        epoch = (ends[-1] - cached) / epochs
        if rank == 0:
            Path(out).write_text(json.dumps({"images": len(data), "cache_s": cached - start, "epoch_s": epoch}))
    finally:
        distributed.shutdown()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_root")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--setups", nargs="+", default=["1x1", "1x2", "2x1"], help="PxT: P processes of T threads")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, default model, {args.epochs} epoch(s)\n")
    print("| processes x threads | images | feature cache (s) | time per epoch (s) |\n|---|---:|---:|---:|")
    for setup in args.setups:
        procs, threads = map(int, setup.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "times.json")
            mp.spawn(_worker, args=(procs, threads, distributed.free_port(), args.data_root, args.epochs, out), nprocs=procs)
            t = json.loads(Path(out).read_text())
        print(f"| {procs} x {threads} | {t['images']} | {t['cache_s']:.1f} | {t['epoch_s']:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
