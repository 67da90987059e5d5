"""UniAD as the paper and the authors' config define it: sizes, switches, scores, training, checkpoints."""

import pytest
import torch

from uniad_mini import SyntheticAD, UniAD
from uniad_mini.evaluation import ALL_METRICS
from uniad_mini.scoring import anomaly_map, image_score, score, smooth
from uniad_mini.config import make_config


TINY = dict(hidden_dim=32, heads=2, layers=1, ffn_dim=64)  # same code paths, fast


def trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def small_data():
    train = SyntheticAD("train", n_train=3)
    test = SyntheticAD("test", n_test_good=2, n_test_bad=2)
    cacher = UniAD(**TINY)
    return cacher.cache(train, progress=False), cacher.cache(test, progress=False)


def test_paper_recipe_has_the_authors_7676352_trainable_parameters_and_the_default_half_the_depth():
    paper = UniAD(recipe="paper")
    assert trainable(paper) == 7_676_352  # width 256, 4 + 4 layers, FFN 1024, 4 query tables of 196 x 256
    assert trainable(paper.backbone) == 0
    default = UniAD()
    assert len(default.transformer.encoder) == len(default.transformer.decoder) == 2
    assert trainable(default) == 3_889_600


def test_backbone_stays_in_eval_mode_when_the_model_trains():
    model = UniAD(**TINY).train()
    assert model.transformer.training and not model.backbone.training


def test_the_scoring_options_reach_the_scores():
    model = UniAD(**TINY).eval()
    feats = torch.randn(3, model.channels, *model.grid)
    scores, maps = model.score_features(feats)
    with torch.no_grad():
        rec = model.reconstructor().eval()(model.standardize(feats))  # eval: no jitter
    plain = anomaly_map(rec, model.standardize(feats), (224, 224))
    torch.testing.assert_close(maps, plain)  # the defaults: the paper's map and 16 x 16 window
    torch.testing.assert_close(scores, image_score(plain))
    model.config.map_sigma, model.config.score_pool = 4.0, 32
    scores, maps = model.score_features(feats, size=(112, 112))
    torch.testing.assert_close(scores, image_score(smooth(plain, 4.0), 32))
    small = smooth(anomaly_map(rec, model.standardize(feats), (112, 112)), 2.0)  # sigma scales with the map
    torch.testing.assert_close(maps, small)
    assert torch.equal(score(model.reconstructor(), model.standardize(feats), (224, 224), **model.scoring())[0], scores)
    for bad in (dict(score_pool=0), dict(score_pool=225), dict(map_sigma=-1.0)):
        with pytest.raises(ValueError, match="score_pool|map_sigma"):
            make_config(**bad)


def test_balance_trains_on_every_class_repeated_to_the_largest():
    from uniad_mini.features import Cache

    model = UniAD(**TINY, epochs=1)
    feats = torch.randn(5, model.channels, *model.grid)
    cache = Cache(feats, torch.zeros(5), torch.zeros(5, 4, 4, dtype=torch.uint8), ["a", "a", "a", "b", "c"])
    balanced = cache.balanced()
    assert balanced.classes == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert torch.equal(balanced.features[3:6], feats[[3, 3, 3]]) and torch.equal(balanced.features[:3], feats[:3])
    fitted = UniAD(**TINY, epochs=1, balance=True).fit(cache, progress=False)
    by_hand = UniAD(**TINY, epochs=1)
    by_hand.set_feature_stats(feats)  # the statistics of the images as they are
    by_hand.fit_features(balanced.features, progress=False)
    for a, b in zip(fitted.state_dict().values(), by_hand.state_dict().values()):
        assert torch.equal(a, b)
    plain = UniAD(**TINY, epochs=1).fit(cache, progress=False)  # 5 samples, not 9: other weights
    assert not torch.equal(plain.transformer.output_proj.weight, fitted.transformer.output_proj.weight)


def test_unknown_option_and_bad_values_are_clear_errors():
    with pytest.raises(TypeError, match="unknown UniAD option"):
        UniAD(lerning_rate=1)
    with pytest.raises(ValueError, match="unknown recipe"):
        UniAD(recipe="laptop")
    with pytest.raises(ValueError, match="blocks every key"):
        UniAD(image_size=96, neighbor_size=13)


def test_predict_returns_scores_and_maps_at_input_size():
    model = UniAD(**TINY).eval()
    scores, maps = model.predict(torch.rand(2, 3, 100, 120))
    assert scores.shape == (2,) and maps.shape == (2, 100, 120)
    assert (maps >= 0).all()


@pytest.mark.parametrize("bad,match", [
    (torch.rand(3, 32, 32), r"\(B, 3, H, W\)"),
    (torch.rand(1, 1, 32, 32), r"\(B, 3, H, W\)"),
    (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), "divide uint8 by 255"),
    (torch.rand(1, 3, 32, 32) * 255, r"in \[0, 1\]"),
])
def test_predict_rejects_bad_input_with_a_message(bad, match):
    with pytest.raises(ValueError, match=match):
        UniAD(**TINY).predict(bad)


def test_fit_is_reproducible_for_a_seed_and_changes_with_it(small_data):
    train, _ = small_data
    runs = [UniAD(**TINY, epochs=2, seed=s).fit(train, progress=False).train_state["history"] for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_training_lowers_the_loss(small_data):
    train, _ = small_data
    history = UniAD(**TINY, epochs=6, batch_size=3).fit(train, progress=False).train_state["history"]
    assert history[-1] < history[0]


def test_resume_from_a_checkpoint_matches_uninterrupted_training(small_data, tmp_path):
    train, test = small_data
    full = UniAD(**TINY, seed=3).fit(train, epochs=4, progress=False)
    # interrupt a 4-epoch run after epoch 2 (as Ctrl-C would), then resume from its checkpoint
    first = UniAD(**TINY, seed=3)

    class Stop(Exception):
        pass

    def stop_at_2(model, epoch, loss):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        first.fit(train, epochs=4, progress=False, checkpoint=tmp_path / "ck.pt", callback=stop_at_2)
    resumed = UniAD.load(tmp_path / "ck.pt").fit(train, epochs=4, progress=False)
    assert resumed.train_state["history"] == full.train_state["history"]
    for name, weight in full.transformer.state_dict().items():
        assert torch.equal(weight, resumed.transformer.state_dict()[name]), name
    torch.testing.assert_close(full.score_features(test.features), resumed.score_features(test.features))


def test_checkpoint_loads_with_weights_only_and_predicts_the_same(small_data, tmp_path):
    train, test = small_data
    model = UniAD(**TINY, epochs=1).fit(train, progress=False)
    model.save(tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    assert ckpt["config"]["hidden_dim"] == 32
    assert set(ckpt["transformer"]) == set(model.transformer.state_dict())  # the frozen backbone is not saved
    loaded = UniAD.load(tmp_path / "m.pt")
    torch.testing.assert_close(model.score_features(test.features), loaded.score_features(test.features))
    assert not (tmp_path / "m.pt.tmp").exists()


def test_loading_a_foreign_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a uniad_mini checkpoint"):
        UniAD.load(bad)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        UniAD.load(tmp_path / "missing.pt")


def test_evaluate_returns_per_class_image_and_pixel_auroc_and_mean(small_data):
    train, test = small_data
    model = UniAD(**TINY, epochs=1).fit(train, progress=False)
    results = model.evaluate(test, metrics="auroc")
    assert set(results) == {"cap", "carpet", "mesh", "mean"}
    for r in results.values():
        assert set(r) == {"image_auroc", "pixel_auroc"} and all(0 <= v <= 1 for v in r.values())
    every = model.evaluate(test)
    assert set(every["mean"]) == set(ALL_METRICS) and every["mesh"]["pixel_auroc"] == results["mesh"]["pixel_auroc"]
    assert results["mean"]["image_auroc"] == pytest.approx(sum(results[c]["image_auroc"] for c in ("cap", "carpet", "mesh")) / 3)


def test_input_norm_switch_changes_the_backbone_input_range():
    from uniad_mini.backbone import IMAGENET_MEAN, LITE_MEAN

    assert UniAD(**TINY).backbone.mean == LITE_MEAN  # what Lite0 was trained with
    imagenet = UniAD(**TINY, input_norm="imagenet")
    assert imagenet.backbone.mean == IMAGENET_MEAN
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(UniAD(**TINY).features(x), imagenet.features(x))
    with pytest.raises(ValueError, match="unknown input_norm"):
        UniAD(input_norm="zscore")


def test_training_beats_random_weights_and_a_copying_model_scores_chance(one_thread):
    """The demo's claim in small: a trained model localises synthetic defects better than its random init,
    and the identical shortcut's end point -- a reconstructor that copies its input -- sees nothing at all."""
    from uniad_mini.evaluation import evaluate
    from uniad_mini.scoring import score

    extractor = UniAD()
    train = extractor.cache(SyntheticAD("train", n_train=8), progress=False)
    test = extractor.cache(SyntheticAD("test", n_test_good=3, n_test_bad=6), progress=False)
    untrained = UniAD()
    untrained.set_feature_stats(train.features)
    trained = UniAD(epochs=10).fit(train, progress=False)
    before = untrained.evaluate(test, progress=False, metrics="auroc")["mean"]
    after = trained.evaluate(test, progress=False, metrics="auroc")["mean"]
    assert after["pixel_auroc"] > before["pixel_auroc"] + 0.03, (before, after)
    assert after["image_auroc"] > before["image_auroc"] + 0.05, (before, after)

    copy = torch.nn.Identity()  # reconstructs everything, defects included
    scores, maps = score(copy, trained.standardize(test.features), (224, 224))
    assert maps.abs().max() == 0  # no reconstruction error anywhere
    assert evaluate(scores, maps, test, metrics="auroc")["mean"] == {"image_auroc": 0.5, "pixel_auroc": 0.5}


def test_model_of_images_is_the_paper_path_and_equals_the_scoring_path(one_thread):
    model = UniAD(**TINY).eval()
    images = torch.rand(3, 3, 160, 224, generator=torch.Generator().manual_seed(7))  # non-square: squashed
    out = model(images)
    assert out.features.shape == out.reconstruction.shape == (3, model.channels, *model.grid)
    assert out.maps.shape == (3, 160, 224) and out.scores.shape == (3,)
    # the path step by step: features -> standardised tokens -> transformer -> error map -> pooled maximum
    square = torch.nn.functional.interpolate(images, size=(224, 224), mode="bilinear", antialias=True)
    f = model.standardize(model.features(square))
    torch.testing.assert_close(out.features, f)
    rec = model.transformer(f.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(f.shape)
    torch.testing.assert_close(out.reconstruction, rec)
    error = (rec - f).pow(2).sum(1, keepdim=True).sqrt()  # (B, 1, 14, 14)
    square_map = torch.nn.functional.interpolate(error, size=(224, 224), mode="bilinear", align_corners=True)
    expected_scores = torch.nn.functional.avg_pool2d(square_map, 16, stride=1).flatten(1).amax(1)
    torch.testing.assert_close(out.scores, expected_scores)
    scores, maps = model.predict(images)  # the scoring path a user calls
    assert torch.equal(scores, out.scores.detach()) and torch.equal(maps, out.maps.detach())
    cached_scores, _ = model.score_features(model.features(square))  # the path evaluation runs on cached features
    torch.testing.assert_close(cached_scores, out.scores.detach())


def test_a_checkpoint_holds_no_run_time_choice_and_loads_with_them_chosen_anew(tmp_path):
    model = UniAD(**TINY, backend="triton", fast=False, compile=True, seed=3)  # triton: never run on this CPU
    model.save(tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert not {"backend", "fast", "compile"} & set(saved["config"]) and saved["format"] == 3
    loaded = UniAD.load(tmp_path / "m.pt")  # the defaults: backend "auto" runs on the CPU
    assert (loaded.config.backend, loaded.config.fast, loaded.config.compile) == ("auto", True, False)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    plain = UniAD.load(tmp_path / "m.pt", backend="torch", fast=False)
    torch.testing.assert_close(loaded.predict(images).scores, plain.predict(images).scores, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="run-time choices"):
        UniAD.load(tmp_path / "m.pt", layers=4)  # the architecture is the file's own


def test_a_format_2_checkpoint_with_run_time_choices_in_its_config_still_loads(tmp_path):
    from dataclasses import asdict

    model = UniAD(**TINY, seed=4)
    torch.save({"format": 2, "config": {**asdict(model.config), "backend": "triton", "fast": True, "compile": False},
                "transformer": model.transformer.state_dict(), "feature_mean": model.feature_mean,
                "feature_std": model.feature_std, "train_state": model.train_state}, tmp_path / "old.pt")
    loaded = UniAD.load(tmp_path / "old.pt")
    assert loaded.config.backend == "auto"
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.predict(images).scores, model.eval().predict(images).scores)


def test_predict_takes_image_files_and_pil_images_each_at_its_own_size(tmp_path):
    from PIL import Image

    model = UniAD(**TINY).eval()
    pixels = (torch.rand(48, 80, 3, generator=torch.Generator().manual_seed(9)) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "part.png")
    as_tensor = model.predict(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255)
    for images in (tmp_path / "part.png", str(tmp_path / "part.png"), Image.open(tmp_path / "part.png")):
        pred = model.predict(images)
        assert pred.maps.shape == (1, 48, 80)
        torch.testing.assert_close(pred.scores, as_tensor.scores)
    assert model.predict([tmp_path / "part.png", Image.fromarray(pixels)]).scores.shape == (2,)
    Image.fromarray(pixels[:40]).save(tmp_path / "other.png")
    with pytest.raises(ValueError, match="2 sizes .* one at a time"):
        model.predict([tmp_path / "part.png", tmp_path / "other.png"])
