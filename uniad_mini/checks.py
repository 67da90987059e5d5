"""The up-front data check: every problem a reader can find, found before the first epoch and reported together
(none of the paper: a long training run must never end in a data error).

    check_data(data, ...)        decode every image and mask of each data set exactly as training and
                                 evaluation will; raise ONE DataError listing every problem (indexing's too)
    open_checked(ROOT, splits)   open each split of DATA_ROOT (any layout: layouts.open_data) and check
                                 them all, so a problem in the test split stops `train` before it trains

`UniAD.fit` checks its training set in the same pass that caches its features (features.cache_features:
each image is read once) and checks the sets it is given to check with it (`fit(train, check=[test])`) before
the first epoch; a caller can run `check_data` on any split up front (`model.check_data(test)`). What is odd but valid is returned
as notes, one line each: defect images whose mask marks no pixel (kept for the image metrics, left out of
the pixel metrics and AUPRO: evaluation.pixel_labelled).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .errors import DataError
from .geometry import RESIZE_DEFAULT
from .layouts import open_data

DECODE_THREADS = 4  # PIL decodes without the GIL; more threads than cores still overlap the file reads


def _read(data, i: int) -> tuple[str | None, bool]:
    """(the problem of item i or None, whether it is a defect image whose mask marks no pixel)."""
    try:
        item = data[i]
    except DataError as e:
        return str(e), False
    return None, bool(item["label"]) and not bool(item["mask"].any())


def decode_problems(data) -> tuple[list[str], int]:
    """(one line per item that fails to read, how many defect images have an empty mask) of a data set."""
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        found = list(pool.map(lambda i: _read(data, i), range(len(data))))
    return [p for p, _ in found if p is not None], sum(empty for _, empty in found)


def empty_mask_note(n: int, where) -> str:
    return (f"{n} defect image{'s' * (n != 1)} in {where} with an empty mask (or none): kept for the image metrics, "
            f"left out of the pixel metrics and AUPRO")


def check_data(*datasets) -> list[str]:
    """Decode every item of every data set; one DataError with every problem found, else the notes.

    A feature cache (anything with `features`), or a data set `open_checked` returned, has been read already
    and is skipped; a data set built
    with strict=False brings the problems its indexing found (`SampleSet.problems`), listed first.
    """
    problems, notes = [], []
    for data in datasets:
        if hasattr(data, "features") or getattr(data, "checked", False):
            continue
        problems += list(getattr(data, "problems", []))
        found, empty = decode_problems(data)
        problems += found
        if empty:
            notes.append(empty_mask_note(empty, f"the {data.split} split" if hasattr(data, "split") else "the data"))
    if problems:
        raise DataError.of(list(dict.fromkeys(problems)))  # in order, each once
    return notes


def open_checked(root, splits=("train", "test"), classes=None, image_size: int | None = 224,
                 resize: str = RESIZE_DEFAULT, optional=(), decode: bool = True) -> tuple[dict, list[str]]:
    """({split: data set}, notes) of DATA_ROOT, every split indexed and decoded; one DataError listing every
    problem of every split (a split that cannot be indexed at all adds its reason and the others go on).

    optional: splits left out, silently, when no class has a single image in them (`train` checks the test
    split this way: data with no test images at all can still be trained on).
    decode=False: index only; each set keeps its indexing problems (`problems`) for the pass that first reads
    its images to report with theirs (`UniAD.fit(train, check=[test])` reads each image once).
    """
    sets, problems = {}, []
    for split in splits:
        try:
            data = open_data(root, split, classes, image_size, resize, strict=False)
        except DataError as e:
            problems += e.problems
            continue
        if len(data) or split not in optional:
            sets[split] = data
    notes = []
    try:
        notes = check_data(*sets.values()) if decode else []
    except DataError as e:
        problems += e.problems
    if problems and not decode:  # a split that cannot be opened: the others' indexing problems with it
        problems += [p for data in sets.values() for p in data.problems]
    if problems:
        raise DataError.of(list(dict.fromkeys(problems)))
    for data in sets.values() if decode else []:
        data.problems, data.checked = [], True  # check_data() skips it from now on: it was read once
    return sets, notes
