"""Reading one image or mask file (none of the paper: what real files need before UniAD's 224 x 224 input).

Every image comes back as a float (3, S, S) tensor in [0, 1], RGB: grayscale files (MVTec's grid, screw, ...)
are repeated over three channels, because the ImageNet backbone expects three; 16-bit and float files are
scaled to [0, 1]; transparency is composited over black. A mask comes back as a float (S, S) tensor of 0/1
(any nonzero pixel of any channel is anomalous, so 0/255, 0/1 and class-index masks all read right).
EXIF orientation is applied, and JPEGs are decoded at the smallest scale that still covers the requested
size (memory stays bounded for very large files). A non-square image becomes S x S by the model config's
`resize` (geometry.py); its mask follows the same geometry. Every failure is a `DataError` naming the file.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import DataError
from .geometry import RESIZE_DEFAULT, square_pil

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_SIDE = 16  # the smallest image side: one 16 x 16 scoring window, one token of the stride-16 grid
EXIF_SWAPS = (5, 6, 7, 8)  # EXIF orientations that turn the picture by 90 degrees (width <-> height)


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


def pil_to_tensor(im: Image.Image, size: int | None = 224, resize: str = RESIZE_DEFAULT) -> torch.Tensor:
    """Any PIL image -> float (3, size, size) RGB tensor in [0, 1], bilinear, by `resize` (None: native size)."""
    _check_size(size)
    rgb = _to_rgb(im)
    if isinstance(rgb, np.ndarray):  # high bit depth: resize as float, then repeat the gray channel
        f = Image.fromarray(rgb)  # float32 -> mode "F"
        if size is not None:
            f = square_pil(f, size, resize, Image.BILINEAR)
        return torch.from_numpy(np.asarray(f, dtype=np.float32).copy()).expand(3, -1, -1).contiguous()
    if size is not None and rgb.size != (size, size):
        rgb = square_pil(rgb, size, resize, Image.BILINEAR)
    a = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)  # (3, S, S)
    return torch.from_numpy(np.ascontiguousarray(a))


def pil_to_mask(im: Image.Image, size: int | None = 224, resize: str = RESIZE_DEFAULT) -> torch.Tensor:
    """Any PIL image -> float (size, size) tensor of 0/1: a pixel is 1 when any of its channels is nonzero."""
    _check_size(size)
    a = np.asarray(im)
    if a.ndim == 3:  # colour mask: anomalous where any channel is set
        a = a.any(axis=2)
    binary = Image.fromarray((a != 0).astype(np.uint8) * 255)  # mode "L"
    if size is not None and binary.size != (size, size):
        binary = square_pil(binary, size, resize, Image.NEAREST)  # nearest keeps the mask binary
    return torch.from_numpy((np.asarray(binary) > 0).astype(np.float32))  # (S, S)


def load_image(path, size: int | None = 224, max_side: int | None = None, resize: str = RESIZE_DEFAULT) -> torch.Tensor:
    """Read an image file as a float (3, size, size) RGB tensor in [0, 1] (gray / RGBA / CMYK made RGB).

    size None keeps the native size; then `max_side` (if set) shrinks a larger image, aspect kept.
    """
    with _open(path, size=size if size is not None else max_side) as im:
        _check_side(im, path, "image")
        if size is None and max_side is not None and max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.BILINEAR)
        return pil_to_tensor(im, size, resize)


def as_batch(images) -> torch.Tensor:
    """A batch (B, 3, H, W) in [0, 1]: a tensor as it is; an image file or PIL image, or a list of them, read
    at its own size (one size for the whole list: images of several sizes are scored one at a time)."""
    if isinstance(images, torch.Tensor):
        return images
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images: pass a tensor (B, 3, H, W), an image file or PIL image, or a list of them")
    batch = [pil_to_tensor(x, None) if isinstance(x, Image.Image) else load_image(x, None) for x in items]
    sizes = sorted({tuple(t.shape[-2:]) for t in batch})
    if len(sizes) > 1:
        raise ValueError(f"the images have {len(sizes)} sizes ({', '.join(f'{w}x{h}' for h, w in sizes[:3])}...): "
                         "predict them one at a time, or a folder with uniad-mini predict")
    return torch.stack(batch)


def load_mask(path, size: int | None = 224, resize: str = RESIZE_DEFAULT) -> torch.Tensor:
    """Read a ground-truth mask as a float (size, size) tensor of 0/1 (nearest-neighbour resize).

    An all-zero mask is read as it is: on a defect image it means unlabelled pixels (evaluation.pixel_labelled).
    """
    with _open(path, "mask") as im:
        return pil_to_mask(im, size, resize)
