"""The quality benchmark's nearest-neighbour baseline against a brute-force loop, its command line
(`uniad-mini bench-quality --baselines knn`), and the speed tables (`uniad-mini bench-speed`) on a tiny model."""
import pytest
import torch
import torch.nn.functional as F

from uniad_mini import SyntheticAD, UniAD
from uniad_mini.app import actions
from uniad_mini.bench.quality import knn_results
from uniad_mini.app.cli import main
from uniad_mini.evaluation import evaluate
from uniad_mini.scoring import image_score, score
from uniad_mini.baselines import NearestToken
from uniad_mini.synthetic import write_mvtec

TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64)
SMALL = [f"--set={k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def caches():
    model = UniAD(**TINY)
    train = model.cache(SyntheticAD("train", n_train=1), progress=False)  # one image per class
    test = model.cache(SyntheticAD("test", n_test_good=1, n_test_bad=1), progress=False)
    model.set_feature_stats(train.features)
    return model, train, test


def test_knn_baseline_equals_a_brute_force_nearest_token_loop(caches):
    model, train, test = caches
    z = lambda f: (f - model.feature_mean[:, None, None]) / model.feature_std[:, None, None]  # noqa: E731
    bank = torch.stack([z(f)[:, i, j] for f in train.features for i in range(14) for j in range(14)])  # (T, C)
    dist = torch.zeros(len(test.labels), 1, 14, 14)
    for n, f in enumerate(test.features):
        for i in range(14):
            for j in range(14):  # the distance to every normal token, the smallest one
                dist[n, 0, i, j] = torch.linalg.vector_norm(z(f)[:, i, j] - bank, dim=1).min()
    maps = F.interpolate(dist, size=(224, 224), mode="bilinear", align_corners=True)[:, 0]
    expected = evaluate(image_score(maps), maps, test)
    got = knn_results(model, train, test)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-5)  # float32 distances, summed differently


def test_knn_baseline_scores_training_images_zero_and_a_far_token_high(caches):
    model, train, _ = caches
    baseline = NearestToken(model.standardize(train.features))
    scores, maps = score(baseline, model.standardize(train.features), (224, 224))
    assert scores.abs().max() < 1e-2 and maps.abs().max() < 1e-2  # each token finds itself (cdist rounding)
    odd = train.features[:1].clone()
    odd[0, :, 5, 5] += 100.0  # one token far from every normal one
    scores, maps = score(baseline, model.standardize(odd), (224, 224))
    r, c = divmod(int(maps[0].argmax()), 224)
    assert scores[0] > 1.0 and abs(r - 5 * 223 / 13) <= 1 and abs(c - 5 * 223 / 13) <= 1  # align_corners grid


def test_bench_quality_prints_the_model_table_the_baseline_table_and_the_time(tmp_path, capsys):
    root = write_mvtec(tmp_path / "data", classes=["carpet", "mesh"], n_train=3, n_test_good=1, n_test_bad=1)
    argv = ["bench-quality", str(root), "--epochs", "1", "--baselines", "knn", "--seed", "3", "--quiet",
            "--out", str(tmp_path / "run"), *SMALL]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Seeds 3; epochs 1" in out and '"hidden_dim": 32' in out and "carpet 3 / 2 / 1" in out
    assert out.count("| **mean** |") == 2 and "Baseline: nearest training token" in out and "Wall time" in out


def test_bench_quality_reads_the_data_root_from_the_environment(tmp_path, monkeypatch):
    seen = {}

    def fake_run(data_root, *args, **kwargs):
        seen["root"] = data_root
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(actions, "run_protocol", fake_run)
    monkeypatch.setenv("UNIAD_DATA", str(tmp_path))
    assert main(["bench-quality", "--quiet"]) == 130 and seen["root"] == tmp_path


def test_bench_quality_and_bench_speed_refuse_bad_options_in_one_line(capsys):
    assert main(["bench-quality", "/nonexistent", "--set", "no_such_option=1"]) == 2
    assert "uniad-mini bench-quality: error: unknown UniAD option" in capsys.readouterr().err
    assert main(["bench-speed", "--batch", "0"]) == 2
    assert "uniad-mini bench-speed: error: --batch" in capsys.readouterr().err


def test_perf_times_the_training_step_of_a_tiny_model(capsys):
    assert main(["bench-speed", "--only", "training", "--batch", "1", "--repeats", "1", "--threads", "1", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "### Training, batch 1, 1 thread(s)" in out and "| dev set (258 images) | 258 |" in out


def test_the_export_table_puts_the_graphs_beside_eager_pytorch(one_thread):
    from uniad_mini.bench.engines import exported

    table = exported(dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64, image_size=128), batches=(1, 2), repeats=1)
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert [r[1].strip() for r in rows][:2] == ["eager", "ONNX Runtime"] and len(rows) % 2 == 0
    assert all(float(r[2]) > 0 and r[3].strip().endswith("x") for r in rows)
    roof = [line.split("|")[1:-1] for line in table.split("Against the roof")[1].splitlines() if line.startswith("| ")]
    assert [r[0].strip() for r in roof[1:]] == [r[1].strip() for r in rows[len(rows) // 2:]]  # each engine, batch 2
    assert all(float(c.split("(")[1].rstrip("%) ")) > 0 for r in roof[1:] for c in r[3:])


def test_the_roofs_flop_count_is_the_hand_count():
    """The transformer stage's FLOPs (torch's counter, engines.stage_flops) are the forward of roofline's hand
    count (a step is 3 forwards less the input projection's input gradient); the whole is the two stages."""
    from uniad_mini import UniAD
    from uniad_mini.bench.engines import stage_flops
    from uniad_mini.bench.roofline import step_flops

    model = UniAD(hidden_dim=32, heads=2, layers=1, ffn_dim=64, image_size=128)
    flops, cfg, (h, w) = stage_flops(model), model.config, model.grid
    N, C = h * w, model.channels
    step = step_flops(1, N, C, cfg.hidden_dim, cfg.ffn_dim, cfg.layers)
    assert 3 * flops["transformer"] == step + 2 * N * C * cfg.hidden_dim
    assert flops["whole"] == flops["backbone"] + flops["transformer"] and flops["backbone"] > 0
