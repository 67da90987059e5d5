"""The exported graphs against eager PyTorch, and against the measured roof (`uniad-mini bench-speed --only export`).

None of the paper here: this times `graph.Graph` (the scoring path `uniad-mini export` writes) in ONNX Runtime and
OpenVINO beside the model itself, on the CPU, with the same thread count for all.

1. Speed: images/s of the model eager (`UniAD.predict`, the default fast path) and of its graphs, batch 1 and 8,
   the whole path and the backbone and transformer apart (the map and score are the whole less the two), timed
   interleaved (medians, one untimed call of a variant before each timed one); how far each engine's scores are
   from eager's. OpenVINO runs in fp32 and, as a second engine where the CPU has bf16 products (AVX512-BF16 or
   AMX), with bf16 products.
2. The roof: each stage's FLOPs per image, counted by torch's FlopCounterMode on the graph's modules (products and
   convolutions), over its time gives its GFLOP/s; the roof is the fastest one (m x k) @ (k x n) product at the
   transformer FFN's shape that any engine here runs (torch, ONNX Runtime, OpenVINO: a one-node graph), in fp32
   and in bf16. A stage's share of it says how much faster that stage could get at that precision on this CPU.
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..evaluation import markdown_table
from ..graph import OPSET, Graph, write_onnx
from ..model import UniAD
from .roofline import interleaved

PARTS = ("whole", "backbone", "transformer")
BF16 = "OpenVINO bf16"  # the one engine whose products are bf16
INNER = 10  # products per timing of the roof


def engines(paths: dict, threads: int) -> dict:
    """{(engine, name): run(x)} of ONNX files {name: path}: ONNX Runtime and, where installed, OpenVINO in fp32
    and with bf16 products."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not steal the
    #                                                               cores from the engine timed next
    run = {}
    for name, path in paths.items():
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        run[("ONNX Runtime", name)] = lambda x, s=session: s.run(None, {s.get_inputs()[0].name: x})
    try:
        import openvino as ov
    except ImportError:
        return run
    core = ov.Core()
    native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")  # elsewhere bf16 would run f32
    for engine, precision in [("OpenVINO", "f32")] + [(BF16, "bf16")] * native_bf16:
        for name, path in paths.items():
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                                            "INFERENCE_NUM_THREADS": threads})
            run[(engine, name)] = lambda x, c=compiled: c(x)
    return run


def write_matmul(path: Path, k: int, n: int) -> None:
    """A one-node ONNX graph: x (m, k) @ a constant (k, n), the roof's product."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), str(path))


def stage_flops(model) -> dict:
    """{part: FLOPs per image} of the graph's stages, as torch.utils.flop_counter counts them."""
    flops = {}
    for part in PARTS:
        graph = Graph(model, part)
        with FlopCounterMode(display=False) as counter:
            graph(graph.example(1))
        flops[part] = counter.get_total_flops()
    return flops


def _first(out) -> np.ndarray:
    """A graph's first output (the scores) from ONNX Runtime's list or OpenVINO's dict of outputs."""
    return np.asarray(out[0] if isinstance(out, (list, tuple)) else next(iter(out.values())))


def exported(options: dict, batches=(1, 8), repeats: int = 3) -> str:
    """The two tables of the module docstring for the model of UniAD `options`, as Markdown."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "ONNX Runtime is not installed: pip install -e \".[export]\" (not measured)"
    model = UniAD(**options).eval()
    cfg, threads = model.config, torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {part: Path(tmp) / f"{part}.onnx" for part in PARTS}
        for part, path in paths.items():
            write_onnx(Graph(model, part), path)
        write_matmul(Path(tmp) / "matmul.onnx", cfg.hidden_dim, cfg.ffn_dim)
        run = engines({**paths, "matmul": Path(tmp) / "matmul.onnx"}, threads)
    rows = []
    for batch in batches:
        images = torch.rand(batch, 3, cfg.image_size, cfg.image_size)
        feats = model.standardize(model.features(images))
        inputs = {"whole": images.numpy(), "backbone": images.numpy(), "transformer": feats.numpy()}
        variants = {("eager", "whole"): lambda: model.predict(images),
                    ("eager", "backbone"): lambda: model.standardize(model.features(images)),
                    ("eager", "transformer"): lambda: model.reconstructor()(feats)}
        variants.update({key: (lambda r=fn, x=inputs[key[1]]: r(x)) for key, fn in run.items() if key[1] in inputs})
        with torch.no_grad():
            t = interleaved(variants, repeats, settle=1)  # engines switch caches and allocators
            reference = model.predict(images).scores.numpy()  # (B,)
        for engine in dict.fromkeys(e for e, _ in t):
            got = reference if engine == "eager" else _first(run[(engine, "whole")](inputs["whole"]))  # (B,)
            off = float(np.max(np.abs(got - reference) / np.abs(reference)))  # the scores' largest relative difference
            score = t[(engine, "whole")] - t[(engine, "backbone")] - t[(engine, "transformer")]
            def ratio(part, engine=engine):
                return f"{t[('eager', part)] / t[(engine, part)]:.2f}x"
            rows.append([str(batch), engine, f"{batch / t[(engine, 'whole')]:.1f}", ratio("whole"),
                         f"{batch / t[(engine, 'backbone')]:.1f}", ratio("backbone"),
                         f"{batch / t[(engine, 'transformer')]:.1f}", ratio("transformer"),
                         f"{1000 * score / batch:.1f}", f"{off:.1e}"])
    table = markdown_table(["batch", "engine", "whole, images/s", "vs eager", "backbone, images/s", "vs eager",
                            "transformer, images/s", "vs eager", "map + score (rest), ms / image",
                            "scores vs eager (max rel. diff.)"], rows)
    return table + (
        "\n\nEager is `UniAD.predict` on square images (the default fast path, checks included); the graphs are "
        "graph.Graph traced by torch.onnx.export, run with this many threads, medians of interleaved calls. The "
        "map + score column is the whole minus the two stages, so it holds the graph's map and score and any "
        "overhead. OpenVINO bf16 computes in bfloat16 where the CPU has it: its scores differ from eager's by the "
        "last column; `export --precision bf16` checks them at 3e-2, fp32 at 1e-3.\n\n"
        + roof_table(model, t, batch, run, repeats))


def roof_table(model, t: dict, batch: int, run: dict, repeats: int) -> str:
    """GFLOP/s of each engine's stages at `batch` (times `t`) against the fastest FFN-shaped product here."""
    cfg = model.config
    tokens = batch * model.grid[0] * model.grid[1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, cfg.hidden_dim, generator=g)
    w = torch.randn(cfg.hidden_dim, cfg.ffn_dim, generator=g)
    xb, wb = x.bfloat16(), w.bfloat16()
    products = {("eager", "fp32"): lambda: x @ w, ("eager", "bf16"): lambda: xb @ wb}
    products.update({(engine, "bf16" if engine == BF16 else "fp32"): (lambda r=fn, a=x.numpy(): r(a))
                     for (engine, name), fn in run.items() if name == "matmul"})
    with torch.no_grad():  # each timing: INNER products in a row, after INNER untimed ones
        pt = interleaved({k: (lambda f=f: [f() for _ in range(INNER)]) for k, f in products.items()}, repeats, 1)
    gflops = {key: 2 * tokens * cfg.hidden_dim * cfg.ffn_dim * INNER / s / 1e9 for key, s in pt.items()}
    roof = {p: max(v for (_, q), v in gflops.items() if q == p) for p in ("fp32", "bf16")}
    flops = stage_flops(model)
    rows = []
    for engine in dict.fromkeys(e for e, _ in t):
        p = "bf16" if engine == BF16 else "fp32"
        rate = {part: flops[part] * batch / t[(engine, part)] / 1e9 for part in PARTS}
        rows.append([engine, p, f"{gflops[(engine, p)]:.0f}"] + [f"{rate[part]:.0f} ({100 * rate[part] / roof[p]:.0f}%)"
                                                                   for part in ("backbone", "transformer", "whole")])
    head = (f"Against the roof, batch {batch}: FLOPs per image {flops['backbone'] / 1e9:.2f} G (backbone), "
            f"{flops['transformer'] / 1e9:.2f} G (transformer), {flops['whole'] / 1e9:.2f} G (whole); the roof is the "
            f"fastest {tokens} x {cfg.hidden_dim} @ {cfg.hidden_dim} x {cfg.ffn_dim} product measured here: "
            f"{roof['fp32']:.0f} GFLOP/s in fp32, {roof['bf16']:.0f} in bf16.\n\n")
    return head + markdown_table(["engine", "products", "its FFN product, GFLOP/s", "backbone, GFLOP/s (of roof)",
                                  "transformer, GFLOP/s (of roof)", "whole, GFLOP/s (of roof)"], rows)
