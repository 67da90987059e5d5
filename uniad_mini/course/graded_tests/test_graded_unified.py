"""Graded: the unified and the separate setting (paper Sec. 4.1, Tables 1 and 2): `unified.setting_groups` (which
images train which model, which test images it scores) and `unified.score_groups` (every test image scored by its
group's model, in its place). Implements no part of the paper itself. The caches are built here with known classes;
each image's one feature value is its id, so what trained and what scored each model can be read back. The models
are stand-ins that only record (probes.fit_recorder): no training, every answer exact."""
import pytest
import torch

from uniad_mini.features import Cache

pytestmark = pytest.mark.by_hand(why="the protocol is which images go where, a few lines over the class names")
GROUPS, SCORE = "unified.setting_groups", "probes.scored_groups"


def cache(classes, start=0):
    """A Cache of len(classes) images: image i has the one feature value start + i (its id), a 2 x 2 mask."""
    n = len(classes)
    ids = torch.arange(start, start + n, dtype=torch.float32)
    return Cache(ids.view(n, 1, 1, 1), torch.tensor([i % 2 for i in range(n)]), torch.zeros(n, 2, 2, dtype=torch.uint8),
                 list(classes), [f"{c}/{i:03d}.png" for i, c in enumerate(classes)])


def expected_groups(setting, train_classes, test_classes):
    """The groups written out with loops: (name, training positions, test positions)."""
    if setting == "separate":
        return [(c, [i for i, x in enumerate(train_classes) if x == c],
                 [i for i, x in enumerate(test_classes) if x == c]) for c in sorted(set(test_classes))]
    return [("all", list(range(len(train_classes))), list(range(len(test_classes))))]


def check_groups(expect, got, expected, given):
    if not isinstance(got, (list, tuple)) or not all(isinstance(g, (list, tuple)) and len(g) == 3 for g in got):
        expect.fail("setting_groups' result", "a list of (name, training positions, test positions)",
                    repr(got)[:120], given)
    expect.equal([g[0] for g in got], [e[0] for e in expected], "the groups' names, in order", given)
    for (name, *positions), (_, *wanted) in zip(got, expected):
        for what, pos, want in zip(("training", "test"), positions, wanted):
            if not isinstance(pos, torch.Tensor) or pos.dtype != torch.long or pos.dim() != 1:
                expect.fail(f"group {name!r}: its {what} positions", "a 1-D long tensor",
                            f"{type(pos).__name__} {getattr(pos, 'dtype', '')}", given)
            expect.equal(pos.tolist(), want, f"group {name!r}: the positions of its {what} images", given)


def separate_groups(train_classes, test_classes):
    """The separate setting's groups, as the tests hand them to score_groups (not the student's setting_groups)."""
    return [(c, torch.tensor(tr, dtype=torch.long), torch.tensor(te, dtype=torch.long))
            for c, tr, te in expected_groups("separate", train_classes, test_classes)]


def check_scored(expect, answer, groups, train, test, given):
    """score_groups' answer (scores, maps, fitted models, calls of `each`) against the groups, read back by id."""
    scores, maps, fitted, calls = answer
    expect.equal(len(fitted), len(groups), "models fitted (one per group)", given)
    expected_maps = torch.zeros(len(test), 2, 2)
    for (name, tr, te), model in zip(groups, fitted):
        seen, scored = model["state"]["seen"], model["state"]["scored"]
        expect.equal(sorted(seen.tolist()), sorted(train.features.flatten()[tr].tolist()),
                     f"ids of the training images the model of group {name!r} was fitted on", given)
        expect.equal(sorted(scored.tolist()), sorted(test.features.flatten()[te].tolist()),
                     f"ids of the test images the model of group {name!r} scored", given)
        expected_maps[te] = train.features.flatten()[tr].mean()
    expect.close(scores, test.features.flatten(), "each test image's score (its own id when in its place)", given)
    expect.close(maps, expected_maps, "each test image's map (the mean training id of its group's model)", given)
    return calls


@pytest.mark.points(2)
def test_the_unified_setting_is_one_group_of_every_training_and_every_test_image(expect, student):
    train_classes = ["carpet"] * 3 + ["cap"] * 2 + ["mesh"] * 2
    test_classes = ["cap"] * 2 + ["carpet", "mesh", "carpet"]
    got = student(GROUPS, "unified", cache(train_classes), cache(test_classes))
    check_groups(expect, got, expected_groups("unified", train_classes, test_classes),
                 "unified; 7 training images of carpet, cap, mesh; 5 test images")


@pytest.mark.points(2)
def test_the_separate_setting_gives_each_class_its_own_training_and_test_images(expect, student):
    train_classes = ["cap"] * 3 + ["carpet"] * 2 + ["mesh"] * 4
    test_classes = ["cap"] * 2 + ["carpet"] * 3 + ["mesh"] * 2
    got = student(GROUPS, "separate", cache(train_classes), cache(test_classes))
    check_groups(expect, got, expected_groups("separate", train_classes, test_classes),
                 "separate; training cap x3, carpet x2, mesh x4; test cap x2, carpet x3, mesh x2")


@pytest.mark.points(2)
def test_each_group_has_one_model_fitted_on_its_images_scoring_its_own_test_images(expect, student):
    train_classes, test_classes = ["cap"] * 3 + ["mesh"] * 2, ["cap"] * 2 + ["mesh"] * 3
    train, test = cache(train_classes), cache(test_classes, start=100)
    groups = separate_groups(train_classes, test_classes)
    check_scored(expect, student(SCORE, groups, train, test), groups, train, test,
                 "groups cap (training 0-2, test 0-1) and mesh (training 3-4, test 2-4)")


### BEGIN HIDDEN TESTS
@pytest.mark.points(1, category="classes interleaved and out of order")
def test_interleaved_classes_give_groups_sorted_by_name_with_every_position(expect, student):
    train_classes = ["mesh", "cap", "mesh", "carpet", "cap", "carpet", "mesh", "cap"]
    test_classes = ["carpet", "mesh", "cap", "mesh", "carpet", "cap", "cap"]
    got = student(GROUPS, "separate", cache(train_classes), cache(test_classes))
    check_groups(expect, got, expected_groups("separate", train_classes, test_classes),
                 "separate; classes interleaved in both splits")


@pytest.mark.points(1, category="a class in one split only")
def test_a_training_only_class_gets_no_model_and_a_test_only_class_is_an_error(expect, student):
    train_classes, test_classes = ["screw", "cap", "mesh", "screw", "mesh"], ["mesh", "cap", "mesh"]
    for setting in ("separate", "unified"):
        got = student(GROUPS, setting, cache(train_classes), cache(test_classes))
        check_groups(expect, got, expected_groups(setting, train_classes, test_classes),
                     f"{setting}; screw in the training set only")
    try:
        got = student(GROUPS, "separate", cache(["cap", "mesh"]), cache(["cap", "zipper", "mesh"]))
    except Exception as e:  # the part's error comes back as the student process's answer
        if not str(e).startswith("ValueError"):
            raise
        expect.equal("zipper" in str(e), True, "the ValueError names the class without training images",
                     "separate; zipper in the test set only")
        return
    expect.fail("setting_groups", "a ValueError (no model could score zipper)", repr(got)[:120],
                "separate; zipper in the test set only")


@pytest.mark.points(1, category="groups that interleave")
def test_scores_and_maps_of_interleaved_groups_land_in_their_places(expect, student):
    train_classes = ["mesh", "cap", "carpet", "cap", "mesh", "carpet"]
    test_classes = ["carpet", "mesh", "cap", "mesh", "carpet", "cap", "mesh"]
    train, test = cache(train_classes), cache(test_classes, start=100)
    groups = separate_groups(train_classes, test_classes)
    check_scored(expect, student(SCORE, groups, train, test), groups, train, test, "three classes interleaved")


@pytest.mark.points(1, category="the unified group, and each group handed on")
def test_the_unified_group_fits_one_model_and_each_group_is_handed_to_each(expect, student):
    train, test = cache(["cap", "mesh", "cap"]), cache(["mesh", "cap", "mesh", "cap"], start=100)
    groups = [("all", torch.arange(3), torch.arange(4))]
    calls = check_scored(expect, student(SCORE, groups, train, test), groups, train, test, "one group of everything")
    expect.equal([(n, at.tolist()) for n, at in calls], [("all", [0, 1, 2, 3])], "the calls of each(name, model, "
                 "test positions)", "one group of everything")
    groups = separate_groups(["cap", "mesh", "cap"], ["mesh", "cap", "mesh", "cap"])
    calls = check_scored(expect, student(SCORE, groups, train, test), groups, train, test, "cap and mesh")
    expect.equal([(n, at.tolist()) for n, at in calls], [("cap", [1, 3]), ("mesh", [0, 2])],
                 "the calls of each(name, model, test positions), once per group", "cap and mesh")
### END HIDDEN TESTS
