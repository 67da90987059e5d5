"""Each speed-up against the plain reference path it sits beside: the same numbers, within float rounding.

attention backends (attention.py), the fused optimizer and clipping (training.py), the folded backbone
(backbone.py), decoding in threads (features.py), compilation (training.Compiled)."""
import pytest
import torch

import dataclasses

from uniad_mini import training
from uniad_mini.attention import AUTO, resolve_backend
from uniad_mini.backbone import fold_backbone
from uniad_mini.errors import DataError
from uniad_mini.config import make_config, train_settings
from uniad_mini.features import prefetched_batches
from uniad_mini.training import make_optimizer, train_step
from uniad_mini.transformer import OnTokens, ReconstructionTransformer


def tiny(backend: str, seed: int = 0, jitter: float = 0.0) -> OnTokens:
    torch.manual_seed(seed)
    return OnTokens(ReconstructionTransformer(
        16, grid=(6, 6), dim=32, heads=2, layers=1, ffn=64, dropout=0.0, neighbor_size=3, layerwise_query=True,
        jitter_scale=jitter, jitter_prob=1.0, backend=backend))


def test_auto_is_the_measured_table_per_device_and_precision():
    for (device, precision), backend in AUTO.items():
        assert resolve_backend("auto", torch.device(device), precision) == backend
    assert resolve_backend("torch", torch.device("cpu"), "bf16") == "torch"  # an explicit choice is kept
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the precision read from autocast
        assert resolve_backend("auto", torch.device("cpu")) == AUTO[("cpu", "bf16")]
    assert resolve_backend("auto", torch.device("cpu")) == AUTO[("cpu", "fp32")]


def test_the_sdpa_model_equals_the_plain_model_forward_and_gradients(one_thread):
    x = torch.randn(3, 16, 6, 6, generator=torch.Generator().manual_seed(1))
    plain, fast = tiny("torch"), tiny("sdpa")
    fast.load_state_dict(plain.state_dict())
    y_plain, y_fast = plain(x), fast(x)
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-4, atol=1e-5)
    y_plain.square().mean().backward()
    y_fast.square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_fast_steps_follow_the_plain_steps(one_thread, optimizer):
    """Five steps with jitter (the same RNG draws on both paths), clipping and a fused optimizer."""
    s = train_settings(make_config(lr=1e-3, optimizer=optimizer, grad_clip=0.1, fast=False))
    x = torch.randn(4, 16, 6, 6, generator=torch.Generator().manual_seed(2))
    plain, fast = tiny("torch", jitter=20.0), tiny("sdpa", jitter=20.0)
    fast.load_state_dict(plain.state_dict())
    opt_plain = make_optimizer(plain.parameters(), s)
    opt_fast = make_optimizer(fast.parameters(), dataclasses.replace(s, fast=True))
    plain.train(), fast.train()
    for step in range(5):
        torch.manual_seed(step)
        loss_plain = train_step(plain, opt_plain, x, s.grad_clip)
        torch.manual_seed(step)
        loss_fast = train_step(fast, opt_fast, x, s.grad_clip, foreach=True)
        assert loss_fast.item() == pytest.approx(loss_plain.item(), rel=1e-4)
    start = torch.cat([p.flatten() for p in tiny("torch").parameters()])
    moved_plain = torch.cat([p.flatten() for p in plain.parameters()]) - start
    moved_fast = torch.cat([p.flatten() for p in fast.parameters()]) - start
    assert moved_plain.abs().max() > 0  # the steps did something
    # Adam divides by sqrt(v): a gradient near 0 turns float rounding into visible steps, so compare the moves
    assert torch.nn.functional.cosine_similarity(moved_fast, moved_plain, dim=0) > 0.999
    assert (moved_fast - moved_plain).abs().max() < 0.05 * moved_plain.abs().max()


def test_the_fast_optimizer_is_fused_where_torch_has_it():
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(p, train_settings(make_config(fast=True)))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults.get("fused") or opt.defaults.get("foreach")


def test_without_a_cxx_compiler_one_line_and_eager(monkeypatch):
    monkeypatch.setattr(training, "cxx_compiler", lambda: None)
    lines = []
    model = tiny("torch").eval()
    net = training.Compiled(model, say=lines.append)
    x = torch.randn(2, 16, 6, 6)
    assert len(lines) == 1 and "no C++ compiler" in lines[0] and "eager" in lines[0]
    torch.testing.assert_close(net(x), model(x))
    assert list(net.parameters()) == list(model.parameters())
    assert net.compile_seconds == 0.0


def test_a_compiler_failure_is_one_line_then_eager(monkeypatch):
    def broken(module, **kw):
        def call(x):
            raise RuntimeError("InductorError: CppCompileError: cannot find crt1.o\nmore lines")
        return call

    monkeypatch.setattr(training, "cxx_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(torch, "compile", broken)
    lines = []
    model = tiny("torch").eval()
    net = training.Compiled(model, say=lines.append)
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(net(x), model(x))
    torch.testing.assert_close(net(x), model(x))  # said once
    assert len(lines) == 1 and "torch.compile failed" in lines[0] and "more lines" not in lines[0]


@pytest.mark.slow
@pytest.mark.skipif(training.cxx_compiler() is None, reason="torch.compile's CPU inductor needs a C++ compiler")
def test_the_compiled_model_equals_eager_forward_and_gradients(one_thread):
    x = torch.randn(2, 16, 6, 6, generator=torch.Generator().manual_seed(3))
    eager, compiled_model = tiny("sdpa"), tiny("sdpa")
    net = training.Compiled(compiled_model, say=pytest.fail)
    eager.train(), compiled_model.train()
    y_eager, y_comp = eager(x), net(x)
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-4, atol=1e-5)
    y_eager.square().mean().backward()
    y_comp.square().mean().backward()
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6)
    assert net.compile_seconds > 0


class Items:
    """A data set whose items are dicts as collate takes them; item `bad` raises."""

    def __init__(self, n, bad=None):
        self.n, self.bad = n, bad

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise DataError(f"item {i} is unreadable")
        return {"image": torch.full((3, 16, 16), float(i)), "mask": torch.zeros(16, 16), "label": 0,
                "cls": "c", "defect": "good", "path": f"{i}.png"}


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetched_batches_are_the_plain_loops_batches_in_order(workers):
    data = Items(11)
    got = list(prefetched_batches(data, 4, workers=workers))
    assert [len(b) for b in got] == [4, 4, 3]
    assert [item["image"][0, 0, 0].item() for b in got for item in b] == [float(i) for i in range(11)]


def test_an_unreadable_item_comes_back_as_its_error_in_its_place():
    batches = list(prefetched_batches(Items(9, bad=5), 4, workers=2))
    assert isinstance(batches[1][1], DataError) and "item 5" in str(batches[1][1])
    assert [isinstance(item, DataError) for b in batches for item in b].count(True) == 1


def test_the_cache_is_the_same_with_decoding_in_parallel(one_thread):
    from uniad_mini.features import FeatureExtractor, cache_features
    from uniad_mini.synthetic import SyntheticAD

    data = SyntheticAD("train", image_size=64, n_train=3)
    extractor = FeatureExtractor(image_size=64)
    plain = cache_features(extractor, data, batch_size=4, progress=False)
    extractor.decode_workers = 2
    fast = cache_features(extractor, data, batch_size=4, progress=False)
    assert torch.equal(fast.features, plain.features) and fast.paths == plain.paths
    assert torch.equal(fast.masks, plain.masks) and torch.equal(fast.labels, plain.labels)


def test_the_folded_channels_last_backbone_gives_the_plain_features(one_thread):
    from uniad_mini.features import FeatureExtractor

    images = torch.rand(2, 3, 96, 80, generator=torch.Generator().manual_seed(4))  # odd sizes: asymmetric pads
    extractor = FeatureExtractor(image_size=96)
    plain = extractor(images)
    fast = extractor.speed_up()(images)
    assert extractor.fast_backbone is not None and extractor.decode_workers == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.fast_backbone.modules())
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())
    assert torch.equal(extractor.speed_up(False)(images), plain)  # the plain path again


def test_folding_keeps_the_backbones_outputs_at_every_stride_and_size(one_thread):
    from uniad_mini.backbone import load_backbone

    backbone = load_backbone("lite0").eval()
    fast = fold_backbone(backbone, channels_last=False)
    for side in (33, 64):
        x = torch.rand(1, 3, side, side + 3, generator=torch.Generator().manual_seed(side))
        with torch.no_grad():
            for a, b in zip(backbone.tap_features(x), fast.tap_features(x)):
                assert a.shape == b.shape
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def _settings(**kw):
    s = train_settings(make_config(epochs=2, batch_size=3, lr=1e-3, grad_clip=0.1, precision="fp32", fast=False))
    return dataclasses.replace(s, **kw)


def test_the_loop_on_the_fast_path_follows_the_plain_loop(one_thread):
    feats = torch.randn(7, 16, 6, 6, generator=torch.Generator().manual_seed(5))  # 3 + 3 + 1: a short last batch
    from uniad_mini.training import train

    plain, fast = tiny("torch", jitter=20.0), tiny("sdpa", jitter=20.0)
    fast.load_state_dict(plain.state_dict())
    a = train(plain, feats, _settings(), progress=False)
    b = train(fast, feats, _settings(fast=True), progress=False)
    assert b["history"] == pytest.approx(a["history"], rel=1e-3)
    assert b["optimizer"]["param_groups"][0].get("fused") or b["optimizer"]["param_groups"][0].get("foreach")


def test_the_loop_with_compile_but_no_compiler_says_so_and_trains(one_thread, monkeypatch, capsys):
    from uniad_mini.training import train

    monkeypatch.setattr(training, "cxx_compiler", lambda: None)
    feats = torch.randn(6, 16, 6, 6, generator=torch.Generator().manual_seed(6))
    plain, compiled = tiny("torch"), tiny("torch")
    a = train(plain, feats, _settings(fast=True), progress=False)
    b = train(compiled, feats, _settings(fast=True, compile=True), progress=False)
    assert b["history"] == a["history"]  # eager: the very same steps
    err = capsys.readouterr().err
    assert err.count("no C++ compiler") == 1 and "eager" in err
