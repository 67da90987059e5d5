"""Images, masks and the MVTec AD folder layout (Bergmann et al., CVPR 2019), as UniAD reads them.

UniAD's "unified" setting trains one model on the normal images of *several* classes at once, with no
class label; the class name is kept on each item only so that evaluation can report per-class scores.
The layout, one folder per class:

    ROOT/CLASS/train/good/*.png                 normal training images
    ROOT/CLASS/test/good/*.png                  normal test images          (label 0, empty mask)
    ROOT/CLASS/test/DEFECT/NAME.png             anomalous test images       (label 1)
    ROOT/CLASS/ground_truth/DEFECT/NAME_mask.png   their pixel masks (nonzero = anomalous)

Every image comes back as a float (3, S, S) tensor in [0, 1], RGB: grayscale classes (MVTec's grid,
screw, ...) are repeated over three channels, because the ImageNet backbone expects three. The file list
is indexed, and checked, when the data set is built; images are read lazily in `__getitem__`.
Problems a learner will hit (wrong folder, missing mask, stray file, corrupt PNG) raise `DataError`
with the file's name and what to do about it. Every row of docs/reliability.md that concerns a file or
a folder is decided here: EXIF orientation is applied, JPEGs are decoded at the smallest scale that still
covers the requested size (memory stays bounded for very large files), images under `MIN_SIDE` pixels,
all-zero masks of defective images, masks of normal images and one-class test folders are refused.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")
LAYOUT_HINT = "expected the MVTec AD layout ROOT/CLASS/train/good/*.png, ROOT/CLASS/test/DEFECT/*.png"
DATA_ENV = "UNIAD_DATA"  # where the real images are, when not ../shared/data beside the repository
MIN_SIDE = 16  # the smallest image side: one 16 x 16 scoring window, one token of the stride-16 grid
EXIF_SWAPS = (5, 6, 7, 8)  # EXIF orientations that turn the picture by 90 degrees (width <-> height)


class DataError(ValueError):
    """A data file or folder is missing, misplaced or unreadable; the message names it."""


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
# Single files
# ---------------------------------------------------------------------------------------------------


def _open(path, what: str = "image", size: int | None = None) -> Image.Image:
    """PIL-open and decode `path`, upright (EXIF orientation applied), every failure a DataError naming the file.

    With `size`, a JPEG is decoded at the smallest of its 1/1, 1/2, 1/4, 1/8 scales that still covers
    size x size (PIL's draft mode), so a 40-megapixel photo never sits in memory at full size.
    """
    try:
        im = Image.open(path)
        if size is not None:
            im.draft(None, (size, size))  # JPEG only; other formats ignore it
        im.load()  # Image.open only reads the header; decode now so a corrupt file fails here
        im = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        link = f" (a broken link to {os.readlink(path)})" if os.path.islink(path) else ""
        raise DataError(f"{what} file not found: {path}{link}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(
            f"cannot read {what} {path} ({type(e).__name__}: {e}); it is not a readable "
            f"{'/'.join(x[1:] for x in IMAGE_EXTENSIONS)} file -- re-export it or remove it"
        ) from None
    return im


def _header_size(path, what: str = "image") -> tuple[int, int]:
    """Upright (width, height) from the file header alone (cheap: PIL does not decode the pixels)."""
    try:
        with Image.open(path) as im:
            turned = im.getexif().get(0x0112) in EXIF_SWAPS  # 0x0112: the EXIF orientation tag
            return im.size[::-1] if turned else im.size
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {what} {path} ({type(e).__name__}: {e})") from None


def _check_side(im: Image.Image, path, what: str) -> None:
    if min(im.size) < MIN_SIDE:
        raise DataError(f"{what} {path} is {im.size[0]}x{im.size[1]} pixels; images need at least {MIN_SIDE} "
                        f"a side (one scoring window) -- use the full-resolution file")


def _check_size(size) -> None:
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"image size must be a positive int or None (keep the native size), got {size!r}")


def _to_rgb(im: Image.Image) -> Image.Image | np.ndarray:
    """An RGB PIL image, or for 16/32-bit and float images an (H, W) float32 array in [0, 1].

    16-bit images ('I;16') are divided by 65535. 32-bit int ('I') and float ('F') files do not say
    their range: values up to 1 (float only) are kept, up to 255 divided by 255, else by 65535.
    """
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float32)  # (H, W)
        top = float(a.max(initial=0.0))
        scale = 65535.0 if im.mode.startswith("I;16") or top > 255 else 1.0 if im.mode == "F" and top <= 1 else 255.0
        return np.clip(a / scale, 0.0, 1.0)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:  # composite over black, so transparent pixels do not show their hidden colour
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def pil_to_tensor(im: Image.Image, size: int | None = 224) -> torch.Tensor:
    """Any PIL image -> float (3, size, size) RGB tensor in [0, 1], bilinear resize (None: native size)."""
    _check_size(size)
    rgb = _to_rgb(im)
    if isinstance(rgb, np.ndarray):  # high bit depth: resize as float, then repeat the gray channel
        f = Image.fromarray(rgb)  # float32 -> mode "F"
        if size is not None:
            f = f.resize((size, size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(f, dtype=np.float32).copy()).expand(3, -1, -1).contiguous()
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    a = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)  # (3, S, S)
    return torch.from_numpy(np.ascontiguousarray(a))


def pil_to_mask(im: Image.Image, size: int | None = 224) -> torch.Tensor:
    """Any PIL image -> float (size, size) tensor of 0/1: a pixel is 1 when any of its channels is nonzero."""
    _check_size(size)
    a = np.asarray(im)
    if a.ndim == 3:  # colour mask: anomalous where any channel is set
        a = a.any(axis=2)
    binary = Image.fromarray((a != 0).astype(np.uint8) * 255)  # mode "L"
    if size is not None and binary.size != (size, size):
        binary = binary.resize((size, size), Image.NEAREST)  # nearest keeps the mask binary
    return torch.from_numpy((np.asarray(binary) > 0).astype(np.float32))  # (S, S)


def load_image(path, size: int | None = 224, max_side: int | None = None) -> torch.Tensor:
    """Read an image file as a float (3, size, size) RGB tensor in [0, 1] (gray / RGBA / CMYK made RGB).

    size None keeps the native size; then `max_side` (if set) shrinks a larger image, aspect kept.
    """
    with _open(path, size=size if size is not None else max_side) as im:
        _check_side(im, path, "image")
        if size is None and max_side is not None and max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.BILINEAR)
        return pil_to_tensor(im, size)


def load_mask(path, size: int | None = 224, defective: bool = False) -> torch.Tensor:
    """Read a ground-truth mask as a float (size, size) tensor of 0/1 (nearest-neighbour resize).

    defective: the mask of an anomalous image, refused when it marks no pixel at its native size.
    """
    with _open(path, "mask") as im:
        if defective and not np.asarray(im).any():
            raise DataError(f"mask {path} is all zero, but its image is a defect: draw the defect in the mask, "
                            f"or move the image to test/good and delete the mask")
        return pil_to_mask(im, size)


# ---------------------------------------------------------------------------------------------------
# The MVTec AD layout
# ---------------------------------------------------------------------------------------------------


def _visible(folder: Path) -> list[Path]:
    """Entries of `folder`, sorted by name, without hidden ones (.DS_Store, ._x.png, .ipynb_checkpoints)."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    """The images in one image folder; anything else in it is an error (it would be silently skipped)."""
    files = []
    for p in _visible(folder):
        if p.is_dir():
            raise DataError(f"unexpected folder {p} inside the image folder {folder}; images must sit directly in it")
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(
                f"{p} is not an image (allowed extensions: {', '.join(IMAGE_EXTENSIONS)}); "
                f"remove it or move it out of {folder}"
            )
        files.append(p)
    return files


def _find_mask(class_dir: Path, defect: str, image: Path) -> Path:
    gt_dir = class_dir / "ground_truth" / defect
    for ext in IMAGE_EXTENSIONS:
        for name in (f"{image.stem}_mask{ext}", f"{image.stem}_mask{ext.upper()}"):
            if (gt_dir / name).is_file():
                return gt_dir / name
    raise DataError(
        f"mask missing for the defective test image {image}: expected {gt_dir / (image.stem + '_mask.png')} "
        f"(every image in test/{defect}/ needs a mask in ground_truth/{defect}/)"
    )


def _index_class(root: Path, cls: str, split: str) -> list[Sample]:
    """Sorted samples of one class and split, with masks found and their sizes checked."""
    class_dir, split_dir = root / cls, root / cls / split
    samples = []
    if not split_dir.is_dir():
        raise DataError(f"class {cls!r} has no {split} folder: {split_dir} is missing; {LAYOUT_HINT}")
    if split == "test":
        _refuse_good_masks(class_dir)
    for sub in _visible(split_dir):
        if not sub.is_dir():
            raise DataError(
                f"unexpected file {sub}: images go in {split_dir / 'good'} (normal) "
                f"or {split_dir / 'DEFECT'} (one folder per defect type)"
            )
        defect = sub.name
        if split == "train" and defect != "good":
            raise DataError(
                f"training images must all be normal, in {split_dir / 'good'}; found the folder {sub} "
                f"(anomalous images belong in {class_dir / 'test'})"
            )
        for image in _image_files(sub):
            if defect == "good":
                samples.append(Sample(str(image), None, cls, "good", 0))
                continue
            mask = _find_mask(class_dir, defect, image)
            image_size, mask_size = _header_size(image), _header_size(mask, "mask")
            if image_size != mask_size:
                raise DataError(
                    f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                    f"{image_size[0]}x{image_size[1]}; a mask must have its image's native size"
                )
            samples.append(Sample(str(image), str(mask), cls, defect, 1))
    if not samples:
        raise DataError(f"empty class {cls!r}: no {split} images in {split_dir}; {LAYOUT_HINT}")
    if split == "test" and len({s.label for s in samples}) == 1:
        kind = "normal (test/good)" if samples[0].label == 0 else "defective (no test/good)"
        raise DataError(f"the test images of class {cls!r} in {split_dir} are all {kind}; scoring needs both "
                        f"normal images in test/good and defective ones in test/DEFECT with masks")
    return samples


def _refuse_good_masks(class_dir: Path) -> None:
    """Normal images have no masks: a mask in ground_truth/good means a misfiled image or mask."""
    good = class_dir / "ground_truth" / "good"
    if good.is_dir() and _visible(good):
        raise DataError(f"{_visible(good)[0]} is a mask for a normal image; normal images have no masks: "
                        f"delete {good}, or move the image to test/DEFECT and its mask to ground_truth/DEFECT")


def find_classes(root) -> list[str]:
    """Every subfolder of `root` that holds a train/ or test/ folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; {LAYOUT_HINT}")
    classes = [p.name for p in _visible(root) if p.is_dir() and any((p / s).is_dir() for s in SPLITS)]
    if not classes:
        hint = ""
        if any((root / s).is_dir() for s in SPLITS):
            hint = f" -- {root} looks like a single class: pass its parent {root.parent} and classes=[{root.name!r}]"
        raise DataError(f"no classes found in {root}: {LAYOUT_HINT}{hint}")
    return classes


class MVTecAD(torch.utils.data.Dataset):
    """The images of one split of one or more classes in the MVTec AD layout, as dicts:

    {"image": (3, S, S) float in [0, 1], "mask": (S, S) float 0/1 (all 0 for normal images),
     "label": 0 normal / 1 anomalous, "cls": class name, "defect": "good" or defect type, "path": str}
    """

    def __init__(self, root, split: str = "train", classes=None, image_size: int | None = 224):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        _check_size(image_size)
        self.root, self.split, self.image_size = Path(root), split, image_size
        available = find_classes(self.root)
        if classes is None:
            classes = available
        elif isinstance(classes, str):
            classes = [classes]
        for c in classes:
            if not (self.root / c).is_dir():
                raise DataError(f"class {c!r} not found: no folder {self.root / c}; available classes: {available}")
        self.classes = list(classes)
        self.samples = [s for c in self.classes for s in _index_class(self.root, c, split)]
        self.labels = [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        image = load_image(s.path, self.image_size)  # (3, S, S)
        if s.mask_path is None:
            mask = torch.zeros(image.shape[1:])  # (S, S)
        else:
            mask = load_mask(s.mask_path, self.image_size, defective=True)  # (S, S)
        return {"image": image, "mask": mask, "label": s.label, "cls": s.cls, "defect": s.defect, "path": s.path}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, classes={self.classes}, "
                f"image_size={self.image_size}, n={len(self)}, anomalous={sum(self.labels)})")


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

