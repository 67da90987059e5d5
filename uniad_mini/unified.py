"""The paper's two settings (Sec. 4.1, the columns of Tables 1 and 2): which images train which model, and which
test images each model is measured on.

    unified   ONE model trained on the normal images of every class at once, without class labels (the setting
              the paper is named for);
    separate  one model per class, trained on that class alone (the classic one-class setting).

Nothing else differs: the same model, recipe and epochs, the same cached features. In the separate setting a class's
numbers come from its own model on its own test images only; the unified model scores every test image, and its
numbers are read per class the same way. Every test image is scored by exactly one model, so
`evaluation.evaluate` on the whole test cache gives both settings' per-class metrics and their unweighted mean over
classes (the tables' "mean" row). Only the class names choose the groups; no model ever sees them.

    setting_groups(setting, train, test)      [(name, train positions (n_g,), test positions (m_g,))]: one group
                                              "all" (unified), or one per class of the test set (separate)
    score_groups(groups, train, test, fit)    one model per group, fit(training Cache), scoring its own test images:
                                              scores (N,), maps (N, S, S) of every test image in its place
    side_by_side(unified, separate)           both settings' per-class results in one Markdown table

`bench-quality` (bench/quality.py) and assignment 09 (notebooks/assignments/09_unified_vs_per_class.ipynb) both
go through these functions: one place for the protocol.
"""
from __future__ import annotations

from typing import Callable

import torch

from .evaluation import HEADERS, markdown_table
from .features import Cache

SETTINGS = ("unified", "separate")
UNIFIED_GROUP = "all"  # the name of the unified setting's one group


def setting_groups(setting: str, train: Cache, test: Cache) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The models of a setting: [(name, positions in `train` of the images it trains on (n_g,) long, positions in
    `test` of the images it scores (m_g,) long)].

    unified: [("all", every training position, every test position)]. separate: one group per class of the test
    set, sorted by class name, holding that class's training and test images only (positions ascending). A test
    class with no training image would have no model to score it: ValueError naming it. A class seen in training
    only gets no model in the separate setting (there is nothing of it to measure) and is trained on in the unified
    one, like every training image.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")
    ### HINT: unified: one group named "all" that trains on every training image and scores every test image;
    ### HINT: separate: one group per class of the test set, sorted by name, with the positions of that class's own
    ### HINT: training images and test images only; a test class without a training image has no model (ValueError).
    ### BEGIN SOLUTION
    if setting == "unified":  # the class names are not even read
        return [(UNIFIED_GROUP, torch.arange(len(train)), torch.arange(len(test)))]
    train_at, test_at = train.class_indices(), test.class_indices()  # {class: [positions]}, sorted by name
    untrained = [c for c in test_at if c not in train_at]
    if untrained:
        raise ValueError(f"test class(es) {untrained} have no training image: no separate model can score them")
    return [(c, torch.tensor(train_at[c], dtype=torch.long), torch.tensor(at, dtype=torch.long))
            for c, at in test_at.items()]
    ### END SOLUTION


def score_groups(groups, train: Cache, test: Cache, fit: Callable,
                 each: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every test image scored by the model of its group: (scores (N,), maps (N, S, S)), in `test`'s order.

    groups: `setting_groups`' list. For each group, fit(Cache of the group's training images) gives a trained model
    (anything with `score_features(feats (m, C, h, w)) -> (scores (m,), maps (m, S, S))`, e.g. a `UniAD`), which
    scores the group's test images only; each(name, model, test positions), if given, is called once the group is
    scored (bench-quality draws its pictures there), so that only one model is held at a time.
    """
    ### HINT: per group: a model fitted on that group's training images alone, scoring that group's test images alone;
    ### HINT: each score and map goes to its image's own position in the test set (groups may interleave).
    ### BEGIN SOLUTION
    scores = maps = None
    for name, train_pos, test_pos in groups:
        model = fit(train.subset(train_pos))
        part_scores, part_maps = model.score_features(test.features[test_pos])  # (m_g,), (m_g, S, S)
        if scores is None:
            scores = part_scores.new_zeros(len(test))  # (N,)
            maps = part_maps.new_zeros((len(test), *part_maps.shape[1:]))  # (N, S, S)
        scores[test_pos], maps[test_pos] = part_scores, part_maps
        if each is not None:
            each(name, model, test_pos)
    return scores, maps
    ### END SOLUTION


def percent(value: float) -> str:
    """A fraction as a percent with one decimal: 0.9134 -> '91.3'."""
    return f"{100 * value:.1f}"


def side_by_side(unified: dict, separate: dict, keys=("image_auroc", "pixel_auroc"), cell=percent) -> str:
    """{class or "mean": {metric: value}} of both settings -> one Markdown table, a row per class of `unified`
    (then the mean), for each metric the unified column beside the separate one; cell(value) formats a value
    (bench-quality passes its mean +- std over seeds)."""
    header = ["class"] + [f"{HEADERS[k]} {s}" for k in keys for s in SETTINGS]
    rows = [["**mean**" if name == "mean" else name] + [cell(r[name][k]) for k in keys for r in (unified, separate)]
            for name in unified]
    return markdown_table(header, rows)
