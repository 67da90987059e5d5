"""How an image of any shape becomes the model's S x S square, and how an anomaly map goes back to the image.

None of this is in the paper: MVTec AD's images are square, and UniAD resizes them to 224 x 224. For other
shapes (MVTec LOCO's are 800 x 1600, VisA's about 1.5 : 1) the model config's `resize` chooses one of

    squash   resize to S x S; the aspect ratio is not kept (the default, and exact for square images)
    crop     resize the short side to S and keep the centre S x S; aspect kept, the ends of the long side unseen
    pad      resize the long side to S and centre it on a black S x S square; aspect kept, everything seen

Images (bilinear) and masks (nearest) go through the one arithmetic, `placement`, so a mask stays on its
defect. `to_square` does the same to a batch tensor (for `UniAD.predict`), and `map_to_image` returns the
square's anomaly map (sampled at `square_map_size`) in the image's own H x W: exact for squash and pad; with
crop the ends the model never saw get 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from .errors import OptionError

RESIZES = ("squash", "crop", "pad")
RESIZE_DEFAULT = "squash"


def check_resize(resize: str) -> str:
    if resize not in RESIZES:
        raise OptionError(f"unknown resize {resize!r}; choose one of {RESIZES} (docs/reliability.md, non-square images)")
    return resize


def placement(w: int, h: int, size: int, resize: str) -> tuple[int, int, int, int]:
    """(scaled width, scaled height, x, y): a w x h image is resized to that size and its top-left corner put at
    (x, y) of the size x size square (negative for crop: the part outside the square is cut off)."""
    check_resize(resize)
    if resize == "squash":
        return size, size, 0, 0
    k = size / (min(w, h) if resize == "crop" else max(w, h))
    sw, sh = max(1, round(w * k)), max(1, round(h * k))
    return sw, sh, (size - sw) // 2, (size - sh) // 2


def square_pil(im: Image.Image, size: int, resize: str, resample) -> Image.Image:
    """A PIL image (any mode) -> size x size in the same mode, by `placement` (the rest of the square black)."""
    sw, sh, x, y = placement(*im.size, size, resize)
    if im.size != (sw, sh):
        im = im.resize((sw, sh), resample)
    if (sw, sh) == (size, size):
        return im
    square = Image.new(im.mode, (size, size), 0)
    square.paste(im, (x, y))  # a negative offset crops
    return square


def to_square(images: torch.Tensor, size: int, resize: str) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, size, size) by `placement`: bilinear with antialiasing, then pad or crop."""
    H, W = images.shape[-2:]
    sw, sh, x, y = placement(W, H, size, resize)
    if (H, W) != (sh, sw):
        images = F.interpolate(images, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(images, (x, size - sw - x, y, size - sh - y))  # negative padding crops


def square_in_image(h: int, w: int, size: int, resize: str) -> tuple[int, int, int]:
    """(side L, left P, top Q): the model's square, in the image's own pixels, is L x L with its top-left
    corner at (P, Q) of the image (negative for pad: the square reaches beyond the image)."""
    sw, sh, x, y = placement(w, h, size, resize)
    k = sw / w  # square pixels per image pixel (crop and pad keep the aspect ratio)
    return round(size / k), round(-x / k), round(-y / k)


def square_map_size(h: int, w: int, size: int, resize: str) -> tuple[int, int]:
    """The size to sample the square's anomaly map at for an h x w image: h x w itself for squash, else the
    square's side in image pixels (`map_to_image` then keeps the part over the image)."""
    if check_resize(resize) == "squash":
        return h, w
    side = square_in_image(h, w, size, resize)[0]
    return side, side


def map_to_image(maps: torch.Tensor, h: int, w: int, size: int, resize: str) -> torch.Tensor:
    """The square's anomaly maps (B, *square_map_size) -> maps over the image's own pixels (B, h, w).

    Exact for squash (nothing to do) and pad (the padding cut off); with crop the ends of the long side,
    which the model never saw, get 0.
    """
    if check_resize(resize) == "squash":
        return maps
    L, P, Q = square_in_image(h, w, size, resize)
    return F.pad(maps, (P, w - P - L, Q, h - Q - L))  # negative padding crops (pad), positive fills 0 (crop)
