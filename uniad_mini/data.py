"""Images, masks and the MVTec AD folder layout (Bergmann et al., CVPR 2019), as UniAD reads them.

UniAD's "unified" setting trains one model on the normal images of *several* classes at once, with no
class label; the class name is kept on each item only so that evaluation can report per-class scores.
The layout, one folder per class:

    ROOT/CLASS/train/good/*.png                 normal training images
    ROOT/CLASS/test/good/*.png                  normal test images          (label 0, empty mask)
    ROOT/CLASS/test/DEFECT/NAME.png             anomalous test images       (label 1)
    ROOT/CLASS/ground_truth/DEFECT/NAME_mask.png   their pixel masks (nonzero = anomalous)

Items are dicts of a float (3, S, S) RGB image in [0, 1] and a (S, S) 0/1 mask (`SampleSet`; reading one file
is images.py's part). The file list is indexed, and checked, when the data set is built; images are read
lazily in `__getitem__`. Indexing collects every problem it finds -- wrong folder, missing mask, mask of
another size, mask without an image, stray file, one-class test folder -- and raises them together as one
`DataError`, each naming the file and what to do (`checks.check_data` adds what only decoding finds).
Other layouts (a plain folder layout, a TOML file describing one, VisA) are read by layouts.py into the
same `SampleSet`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch

from .geometry import RESIZE_DEFAULT, check_resize
from .errors import DataError
from .images import (IMAGE_EXTENSIONS, MIN_SIDE, _check_size, _header_size, load_image,  # noqa: F401
                     load_mask, pil_to_mask, pil_to_tensor)

SPLITS = ("train", "test")
LAYOUT_HINT = "expected the MVTec AD layout ROOT/CLASS/train/good/*.png, ROOT/CLASS/test/DEFECT/*.png"
DATA_ENV = "UNIAD_DATA"  # where the real images are, when not ../shared/data beside the repository


class Sample(NamedTuple):
    """One indexed image: where it is, where its mask is (None for normal images), what it shows."""

    path: str
    mask_path: str | None
    cls: str
    defect: str  # "good" or the defect type (the folder name)
    label: int  # 0 normal, 1 anomalous


# ---------------------------------------------------------------------------------------------------
# Where the data is
# ---------------------------------------------------------------------------------------------------




def default_data_root() -> Path | None:
    """The real images: $UNIAD_DATA (a DataError if it is not a folder), else ../shared/data beside the
    repository if it exists, else None."""
    if os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV])
        if not root.is_dir():
            raise DataError(f"{DATA_ENV}={root} is not a folder; point it at an MVTec-layout data folder or unset it")
        return root
    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    return root if root.is_dir() else None


# ---------------------------------------------------------------------------------------------------
# The MVTec AD layout
# ---------------------------------------------------------------------------------------------------


def visible(folder: Path) -> list[Path]:
    """Entries of `folder`, sorted by name, without hidden ones (.DS_Store, ._x.png, .ipynb_checkpoints)."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def image_files(folder: Path, problems: list[str]) -> list[Path]:
    """The images in one image folder; anything else in it is a problem (it would be silently skipped)."""
    files = []
    for p in visible(folder):
        if p.is_dir():
            problems.append(f"unexpected folder {p} inside the image folder {folder}; images must sit directly in it")
        elif p.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(f"{p} is not an image (allowed extensions: {', '.join(IMAGE_EXTENSIONS)}); "
                            f"remove it or move it out of {folder}")
        else:
            files.append(p)
    return files


def mask_fits(image: Path, mask: Path, problems: list[str]) -> bool:
    """Whether a mask has its image's native size (from the headers); a problem line if not, or if unreadable."""
    try:
        image_size, mask_size = _header_size(image), _header_size(mask, "mask")
    except DataError as e:
        problems.append(str(e))
        return False
    if image_size != mask_size:
        problems.append(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                        f"{image_size[0]}x{image_size[1]}; a mask must have its image's native size")
    return image_size == mask_size


def check_split(samples: list[Sample], cls: str, split: str, where, problems: list[str], hint: str) -> None:
    """A problem line for a class with no images in a split, or a test split of one kind only (AUROC undefined)."""
    if not samples:
        problems.append(f"empty class {cls!r}: no {split} images in {where}; {hint}")
    elif split == "test" and len({s.label for s in samples}) == 1:
        kind = "normal" if samples[0].label == 0 else "defective"
        problems.append(f"the test images of class {cls!r} in {where} are all {kind}; scoring needs both normal "
                        f"and defective test images ({hint})")


def _find_mask(class_dir: Path, defect: str, image: Path, problems: list[str]) -> Path | None:
    gt_dir = class_dir / "ground_truth" / defect
    for ext in IMAGE_EXTENSIONS:
        for name in (f"{image.stem}_mask{ext}", f"{image.stem}_mask{ext.upper()}"):
            if (gt_dir / name).is_file():
                return gt_dir / name
    problems.append(f"mask missing for the defective test image {image}: expected "
                    f"{gt_dir / (image.stem + '_mask.png')} (every image in test/{defect}/ needs a mask in "
                    f"ground_truth/{defect}/)")
    return None


def _index_class(root: Path, cls: str, split: str, problems: list[str]) -> list[Sample]:
    """Sorted samples of one class and split, masks found and their sizes checked; each problem one line."""
    class_dir, split_dir = root / cls, root / cls / split
    if not split_dir.is_dir():
        problems.append(f"class {cls!r} has no {split} folder: {split_dir} is missing; {LAYOUT_HINT}")
        return []
    samples = []
    for sub in visible(split_dir):
        defect = sub.name
        if not sub.is_dir():
            problems.append(f"unexpected file {sub}: images go in {split_dir / 'good'} (normal) "
                            f"or {split_dir / 'DEFECT'} (one folder per defect type)")
        elif split == "train" and defect != "good":
            problems.append(f"training images must all be normal, in {split_dir / 'good'}; found the folder "
                            f"{sub} (anomalous images belong in {class_dir / 'test'})")
        else:
            for image in image_files(sub, problems):
                mask = None if defect == "good" else _find_mask(class_dir, defect, image, problems)
                if defect == "good" or (mask is not None and mask_fits(image, mask, problems)):
                    samples.append(Sample(str(image), mask and str(mask), cls, defect, int(defect != "good")))
    if split == "test":
        problems += _stray_masks(class_dir, split_dir)
    check_split(samples, cls, split, split_dir, problems, "normal ones in test/good, defective ones in test/DEFECT")
    return samples


def _stray_masks(class_dir: Path, split_dir: Path) -> list[str]:
    """Masks of normal images (a misfiled image or mask), and masks whose image is not in test/DEFECT."""
    gt, out = class_dir / "ground_truth", []
    for folder in visible(gt) if gt.is_dir() else []:
        masks = visible(folder) if folder.is_dir() else []
        if folder.name == "good" and masks:
            out.append(f"{masks[0]} is a mask for a normal image; normal images have no masks: delete {folder}, "
                       f"or move the image to test/DEFECT and its mask to ground_truth/DEFECT")
            continue
        images = {p.stem for p in visible(split_dir / folder.name)} if (split_dir / folder.name).is_dir() else set()
        for m in masks:
            stem = m.stem[:-5] if m.stem.endswith("_mask") else m.stem
            if stem not in images:
                out.append(f"mask {m} has no image: expected {split_dir / folder.name / (stem + '.png')}; "
                           f"restore the image or remove the mask")
    return out


def find_classes(root) -> list[str]:
    """Every subfolder of `root` that holds a train/ or test/ folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; {LAYOUT_HINT}")
    classes = [p.name for p in visible(root) if p.is_dir() and any((p / s).is_dir() for s in SPLITS)]
    if not classes:
        hint = ""
        if any((root / s).is_dir() for s in SPLITS):
            hint = f" -- {root} looks like a single class: pass its parent {root.parent} and classes=[{root.name!r}]"
        raise DataError(f"no classes found in {root}: {LAYOUT_HINT}{hint}")
    return classes


def pick_classes(classes, available: list[str], where) -> list[str]:
    """The classes asked for (None: all available), each checked to exist."""
    classes = available if classes is None else [classes] if isinstance(classes, str) else list(classes)
    for c in classes:
        if c not in available:
            raise DataError(f"class {c!r} not found in {where}; available classes: {available}")
    return classes


class SampleSet(torch.utils.data.Dataset):
    """Indexed images of one split, of any layout, read lazily as dicts:

    {"image": (3, S, S) float in [0, 1], "mask": (S, S) float 0/1 (all 0 for normal images),
     "label": 0 normal / 1 anomalous, "cls": class name, "defect": "good" or defect type, "path": str}

    A non-square image becomes S x S by `resize` (geometry.py); its mask follows. Indexing collects every
    problem it finds (`problems`, one line each): strict=True raises them together as one DataError;
    strict=False keeps them (and leaves those files out) for `checks.check_data` (and the feature cache) to report with the rest.
    """

    def __init__(self, samples: list[Sample], classes: list[str], split: str, image_size: int | None,
                 resize: str, problems: list[str], strict: bool, where):
        _check_size(image_size)
        self.samples, self.classes, self.split, self.where = samples, classes, split, where
        self.image_size, self.resize, self.problems = image_size, check_resize(resize), problems
        self.labels = [s.label for s in samples]
        if strict and problems:
            raise DataError.of(problems)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        image = load_image(s.path, self.image_size, resize=self.resize)  # (3, S, S)
        if s.mask_path is None:
            mask = torch.zeros(image.shape[1:])  # (S, S); a defect image without a mask: unlabelled pixels
        else:
            mask = load_mask(s.mask_path, self.image_size, self.resize)  # (S, S)
        return {"image": image, "mask": mask, "label": s.label, "cls": s.cls, "defect": s.defect, "path": s.path}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.where)!r}, split={self.split!r}, classes={self.classes}, "
                f"image_size={self.image_size}, resize={self.resize!r}, n={len(self)}, anomalous={sum(self.labels)})")


class MVTecAD(SampleSet):
    """The images of one split of one or more classes in the MVTec AD layout (items: see `SampleSet`)."""

    def __init__(self, root, split: str = "train", classes=None, image_size: int | None = 224,
                 resize: str = RESIZE_DEFAULT, strict: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        classes = pick_classes(classes, find_classes(self.root), self.root)
        problems: list[str] = []
        samples = [s for c in classes for s in _index_class(self.root, c, split, problems)]
        super().__init__(samples, classes, split, image_size, resize, problems, strict, self.root)


# ---------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------


def collate(items: list[dict]) -> dict:
    """A list of items -> one batch: tensors stacked, names kept as lists (use as a DataLoader's collate_fn).

    {"image": (B, 3, S, S), "mask": (B, S, S), "label": (B,) long, "cls": [B], "defect": [B], "path": [B]}
    """
    return {
        "image": torch.stack([it["image"] for it in items]),  # (B, 3, S, S)
        "mask": torch.stack([it["mask"] for it in items]),  # (B, S, S)
        "label": torch.tensor([int(it["label"]) for it in items], dtype=torch.long),  # (B,)
        "cls": [it["cls"] for it in items],
        "defect": [it["defect"] for it in items],
        "path": [it["path"] for it in items],
    }

