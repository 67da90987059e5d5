"""A regression floor on real images (skipped, with the reason, when ../shared/data is absent).

One short unified run on a reduced development set -- every grid and hazelnut_toy training image and every
8th bottle image (76 images), 20 epochs of the default recipe, about a minute and a half on 2 cores -- must
still localise grid's defects. Grid is the class on which the identical shortcut showed. Measured with
this test's own steps on 2026-11-29, in fp32: the default reached grid pixel AUROC 82.8, and the earlier default
recipe -- the same steps with `UniAD(epochs=20, lr=1e-3, grad_clip=1.0, layers=4)` -- 76.3
(docs/results.md has the full-length numbers). The floor sits between the two, so a return of the
collapse fails here while a 1-point drift does not. Since training runs in bf16 where the CPU has it
(`precision="auto"`), the test runs that way too; it passed so on 2026-12-01.
"""
import pytest

from uniad_mini import MVTecAD, UniAD


@pytest.mark.slow
def test_a_short_unified_run_still_localises_grid_defects(shared_data):
    model = UniAD(epochs=20)
    train = model.cache(MVTecAD(shared_data, "train"), progress=False)
    bottle = [i for i, c in enumerate(train.classes) if c == "bottle"]
    train = train.subset([i for i, c in enumerate(train.classes) if c != "bottle"] + bottle[::8])
    model.fit(train, progress=False)
    results = model.evaluate(MVTecAD(shared_data, "test", classes=["grid", "hazelnut_toy"]), progress=False,
                             metrics="auroc")
    assert results["grid"]["pixel_auroc"] >= 0.80, results
    assert results["hazelnut_toy"]["image_auroc"] >= 0.95 and results["hazelnut_toy"]["pixel_auroc"] >= 0.95, results
