"""Data sets in other layouts than MVTec AD's, read into the same `SampleSet` (none of the paper: how people
bring their own data; UniAD itself only needs normal images to train and labelled test images to score).

`open_data(DATA_ROOT, split)` is what every command and `UniAD.fit` / `evaluate` call; DATA_ROOT is one of

    a folder in the MVTec AD layout       ROOT/CLASS/{train,test}/...        (data.MVTecAD)
    a TOML file describing folders        one table per class, below          (FolderAD.from_toml)
    a folder in the VisA layout           ROOT/split_csv/1cls.csv + images    (VisA)
    a VisA-style CSV file                 columns object,split,label,image,mask

The folder layout, per class: `normal_dir` (normal training images), optional `normal_test_dir` (normal test
images), optional `abnormal_dir` (defect images: one folder per defect kind, or the images themselves),
optional `mask_dir` (masks, in the same kind folders or flat). A mask is matched to its image by file stem,
`NAME.*` or `NAME_mask.*`, in any format Pillow reads (PNG, BMP, JPEG, TIFF; the content decides, not the
extension, so BMP data behind a .png name reads). Without `mask_dir`, defect images count for the image
metrics only. As TOML, paths relative to the file or absolute:

    [juice_bottle]
    normal_dir = "juice_bottle/good"
    normal_test_dir = "juice_bottle/test_good"
    abnormal_dir = "juice_bottle/defects"
    mask_dir = "juice_bottle/masks"

VisA (Zou et al., ECCV 2022) ships each object's images under OBJECT/Data/Images/{Normal,Anomaly} and masks
under OBJECT/Data/Masks/Anomaly, and the split in split_csv/1cls.csv; its paths are relative to the root
(for a CSV given directly: to the CSV's folder, or its parent when that folder is split_csv/).
"""
from __future__ import annotations

import csv
from pathlib import Path

from .data import (IMAGE_EXTENSIONS, SPLITS, MVTecAD, Sample, SampleSet, check_split, image_files, mask_fits,
                   pick_classes, visible)
from .errors import DataError
from .geometry import RESIZE_DEFAULT

FOLDER_KEYS = ("normal_dir", "normal_test_dir", "abnormal_dir", "mask_dir")
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": 0, "good": 0, "0": 0, "anomaly": 1, "anomalous": 1, "bad": 1, "1": 1}
VISA_CSV = Path("split_csv") / "1cls.csv"
FOLDER_HINT = "give the class a normal_test_dir (normal test images) and an abnormal_dir (defect images)"


def open_data(root, split: str = "train", classes=None, image_size: int | None = 224,
              resize: str = RESIZE_DEFAULT, strict: bool = True) -> SampleSet:
    """One split of DATA_ROOT, whichever of the layouts above it is in (see the module docstring)."""
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    options = dict(classes=classes, image_size=image_size, resize=resize, strict=strict)
    if root.is_file() and root.suffix.lower() == ".toml":
        return FolderAD.from_toml(root, split, **options)
    if root.is_file() and root.suffix.lower() == ".csv":
        return VisA(root, split, **options)
    if root.is_file():
        raise DataError(f"{root} is a file, but not a .toml description or a VisA .csv; DATA_ROOT is an MVTec-layout "
                        f"folder, a .toml file, or a VisA folder or .csv")
    if (root / VISA_CSV).is_file():
        return VisA(root, split, **options)
    if root.is_dir() and any((p / "Data" / "Images").is_dir() for p in root.iterdir() if p.is_dir()):
        raise DataError(f"{root} looks like the VisA layout (OBJECT/Data/Images) but has no {VISA_CSV}, the split "
                        f"table (columns {','.join(VISA_COLUMNS)}); put it there, or pass the CSV itself")
    return MVTecAD(root, split, **options)


# ---------------------------------------------------------------------------------------------------
# The folder layout, and its TOML description
# ---------------------------------------------------------------------------------------------------


def read_toml(path) -> dict[str, dict[str, Path]]:
    """{class: {key: absolute path}} from a TOML file with one table per class (relative paths: to the file)."""
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: the same parser, installed with the package there (setup.py)
        import tomli as tomllib
    path = Path(path)
    try:
        with open(path, "rb") as f:
            tables = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise DataError(f"{path} is not valid TOML ({e}); one [CLASS] table per class with normal_dir = \"...\"") from None
    loose = [k for k, v in tables.items() if not isinstance(v, dict)]
    if loose or not tables:
        raise DataError(f"{path} must hold one [CLASS] table per class (normal_dir, normal_test_dir, abnormal_dir, "
                        f"mask_dir); found {'no table' if not tables else 'the loose key ' + repr(loose[0])}")
    return {cls: {k: (path.parent / str(v)).resolve() if k in FOLDER_KEYS else v for k, v in table.items()}
            for cls, table in tables.items()}


def _mask_index(folder: Path, problems: list[str]) -> dict[str, Path]:
    """{image stem: mask} of the masks directly in `folder` (NAME.* and NAME_mask.* both give NAME)."""
    index = {}
    for m in visible(folder) if folder.is_dir() else []:
        if m.is_dir():  # a defect kind's own folder of masks
            continue
        if m.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(f"{m} is not a mask image (allowed extensions: {', '.join(IMAGE_EXTENSIONS)}); remove it")
            continue
        stem = m.stem[:-5] if m.stem.endswith("_mask") else m.stem
        if stem in index:
            problems.append(f"two masks for the image stem {stem!r} in {folder}: {index[stem].name} and {m.name}; "
                            f"keep one")
        index[stem] = m
    return index


def _defect_images(abnormal: Path, problems: list[str]) -> list[tuple[str, Path]]:
    """[(defect kind, image)] of an abnormal_dir holding one folder per kind, or the images themselves."""
    entries = visible(abnormal)
    folders = [p for p in entries if p.is_dir()]
    if not folders:  # the images themselves: the kind is the folder's name
        return [(abnormal.name, p) for p in image_files(abnormal, problems)]
    for p in entries:
        if not p.is_dir():
            problems.append(f"unexpected file {p}: {abnormal} holds one folder per defect kind, so images go "
                            f"inside those folders")
    return [(f.name, p) for f in folders for p in image_files(f, problems)]


def _folder_class(cls: str, spec: dict, split: str, problems: list[str]) -> list[Sample]:
    """The samples of one class of the folder layout; each problem one line."""
    for key in sorted(set(spec) - set(FOLDER_KEYS)):
        problems.append(f"class {cls!r}: unknown key {key!r}; the keys are {', '.join(FOLDER_KEYS)}")
    dirs = {k: Path(spec[k]) for k in FOLDER_KEYS if k in spec}
    for key, d in dirs.items():
        if not d.is_dir():
            problems.append(f"class {cls!r}: {key} {d} is not a folder")
    if "normal_dir" not in spec:
        problems.append(f"class {cls!r} has no normal_dir (the folder of its normal training images)")
    ok = {k: d for k, d in dirs.items() if d.is_dir()}
    if split == "train":
        samples = [Sample(str(p), None, cls, "good", 0) for p in image_files(ok["normal_dir"], problems)] \
            if "normal_dir" in ok else []
        check_split(samples, cls, split, dirs.get("normal_dir", cls), problems, "normal_dir holds the training images")
        return samples
    samples = [Sample(str(p), None, cls, "good", 0) for p in image_files(ok["normal_test_dir"], problems)] \
        if "normal_test_dir" in ok else []
    defects = _defect_images(ok["abnormal_dir"], problems) if "abnormal_dir" in ok else []
    samples += _with_masks(cls, defects, ok.get("mask_dir"), problems)
    check_split(samples, cls, split, f"the folders of class {cls!r}", problems, FOLDER_HINT)
    return samples


def _with_masks(cls: str, defects: list[tuple[str, Path]], mask_dir: Path | None, problems) -> list[Sample]:
    """Defect samples with their masks matched by stem (mask_dir/KIND/ first, then mask_dir/); masks left over
    are problems. Without a mask_dir every defect image is kept without a mask (image metrics only)."""
    if mask_dir is None:
        return [Sample(str(p), None, cls, kind, 1) for kind, p in defects]
    flat = _mask_index(mask_dir, problems)
    names = {k for k, _ in defects} | {p.name for p in visible(mask_dir) if p.is_dir()}
    kinds = {kind: _mask_index(mask_dir / kind, problems) for kind in sorted(names)}
    samples, used = [], set()
    for kind, image in defects:
        mask = kinds[kind].get(image.stem) or flat.get(image.stem)  # the kind's folder first, then the flat one
        if mask is None:
            problems.append(f"mask missing for the defect image {image}: expected {mask_dir / kind / image.stem}"
                            f"[_mask].png or {mask_dir / image.stem}[_mask].png (any image format)")
        elif mask_fits(image, mask, problems):
            samples.append(Sample(str(image), str(mask), cls, kind, 1))
        used.add(mask)
    for masks in [flat, *kinds.values()]:
        problems += [f"mask {m} has no image: no defect image of class {cls!r} has the stem {stem!r}; restore "
                     f"the image or remove the mask" for stem, m in masks.items() if m not in used]
    return samples


class FolderAD(SampleSet):
    """Classes in the folder layout: specs {class: {"normal_dir": ..., "normal_test_dir": ..., "abnormal_dir":
    ..., "mask_dir": ...}} (absolute paths, or relative to the working folder). Items: see `SampleSet`."""

    def __init__(self, specs: dict[str, dict], split: str = "train", classes=None, image_size: int | None = 224,
                 resize: str = RESIZE_DEFAULT, strict: bool = True, where=None):
        classes = pick_classes(classes, sorted(specs), where or "the folder specs")
        problems: list[str] = []
        samples = [s for c in classes for s in _folder_class(c, specs[c], split, problems)]
        super().__init__(samples, classes, split, image_size, resize, problems, strict, where or "folders")

    @classmethod
    def from_toml(cls, path, split: str = "train", **options) -> "FolderAD":
        return cls(read_toml(path), split, where=Path(path), **options)


# ---------------------------------------------------------------------------------------------------
# VisA
# ---------------------------------------------------------------------------------------------------


def _visa_rows(table: Path) -> list[dict]:
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), [h.strip().lower() for h in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the split table {table} ({type(e).__name__}: {e})") from None
    missing = [c for c in VISA_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{table} lacks the column(s) {', '.join(missing)}; a VisA split table has the columns "
                        f"{','.join(VISA_COLUMNS)}")
    return [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in rows]


def _visa_sample(row: dict, base: Path, n: int, table: Path, problems: list[str]) -> Sample | None:
    where = f"{table} row {n}"
    label = VISA_LABELS.get(row["label"].lower())
    if label is None:
        problems.append(f"{where}: label {row['label']!r} is neither normal nor anomaly")
        return None
    image, mask = base / row["image"], base / row["mask"] if row["mask"] else None
    if not image.is_file():
        problems.append(f"{where}: image file not found: {image}")
    elif mask is not None and not mask.is_file():
        problems.append(f"{where}: mask file not found: {mask}")
    elif label == 0 and mask is not None:
        problems.append(f"{where}: {mask} is a mask for a normal image; normal images have no masks")
    elif label == 1 and mask is None:
        problems.append(f"{where}: the anomaly image {image} has no mask; fill in its mask column")
    elif image.suffix.lower() not in IMAGE_EXTENSIONS:
        problems.append(f"{where}: {image} is not an image (allowed extensions: {', '.join(IMAGE_EXTENSIONS)})")
    elif mask is None or mask_fits(image, mask, problems):
        return Sample(str(image), mask and str(mask), row["object"], "anomaly" if label else "good", label)
    return None


class VisA(SampleSet):
    """One split of the VisA layout: ROOT/split_csv/1cls.csv (or a CSV given directly) with the columns
    object,split,label,image,mask; the object is the class. Items: see `SampleSet`."""

    def __init__(self, root, split: str = "train", classes=None, image_size: int | None = 224,
                 resize: str = RESIZE_DEFAULT, strict: bool = True):
        root = Path(root)
        table = root if root.is_file() else root / VISA_CSV
        base = root if root.is_dir() else table.parent.parent if table.parent.name == "split_csv" else table.parent
        rows = [(n, r) for n, r in enumerate(_visa_rows(table), 2) if r["split"].lower() == split]
        classes = pick_classes(classes, sorted({r["object"] for _, r in rows}), table)
        problems: list[str] = []
        samples = [s for n, r in rows if r["object"] in classes
                   for s in [_visa_sample(r, base, n, table, problems)] if s is not None]
        for c in classes:
            check_split([s for s in samples if s.cls == c], c, split, table, problems, "the split table's rows")
        super().__init__(samples, classes, split, image_size, resize, problems, strict, table)
