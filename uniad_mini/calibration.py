"""From scores to decisions: thresholds set on normal images only, and the `Prediction` record that applies them.

AUROC needs no threshold; a person who inspects parts does. Calibration sets, per class, the image threshold
at a target false-alarm rate on normal images the model did not train on, and the pixel threshold of the
defect mask the same way:

    held-out normal images of class c  ->  image scores s_1..s_n, pixel scores of their maps
      image threshold t_c = the (floor(fpr * n) + 1)-th highest s_i   (at most fpr * n of them lie above it)
      pixel threshold p_c = the same over the pixels, at pixel_fpr
    decision: anomalous when score > t_c;  defect mask: map > p_c, inside images decided anomalous only

With n < 1 / fpr no false alarm is allowed at all: the threshold is the highest normal score, and the real
false-alarm rate is known only up to a bound (`fpr_upper_bound`, one-sided 95%, Clopper-Pearson), which is
stored with the count it rests on and a warning. A "global" threshold pooled over every class's normal
images is stored beside the per-class ones; it serves images whose class is not known at prediction time.

`held_out` is the project's one split of normal training images into a training part and a held-out part
(a share per class, from a seed, deterministic): calibration scores the held-out part, and any protocol
that needs unseen normal images can call it. `measure` reports what thresholds catch on labelled data
(false alarms on normal images, recall on defects); it never changes a threshold.
"""
from __future__ import annotations

import math
import time
import zlib
import torch

from .errors import OptionError

DEFAULT_FPR = 0.01  # target false-alarm rate on normal images, for image decisions
DEFAULT_PIXEL_FPR = 0.01  # the same for the pixels of the defect mask
DEFAULT_SHARE = 0.2  # share of each class's normal training images held out for calibration
GLOBAL = "(global)"  # the class name shown for the pooled threshold
METHOD = ("image: the (floor(fpr*n)+1)-th highest score of n normal images, anomalous when the score is above it; "
          "pixel: the same over their map pixels at pixel_fpr, mask = map above it in images decided anomalous")


# --------------------------------------------------------------------------------------------------
# The held-out split


def item_classes(data) -> list[str]:
    """The class of every item of a data set (MVTecAD / SyntheticAD: from the index, no image read) or Cache."""
    if hasattr(data, "samples"):
        return [s.cls for s in data.samples]
    if hasattr(data, "classes") and isinstance(data.classes, list) and len(data.classes) == len(data):
        return list(data.classes)  # a Cache
    return [data[i]["cls"] for i in range(len(data))]


def held_out(classes, share: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(kept, held) positions: per class, round(share * n) of its n items held out (at least 1, at most n - 1).

    `classes` is the class of each item, in data order. Which items of a class are held out depends only on
    the class name, its item count, the share and the seed -- not on the other classes or their order.
    """
    if not 0 <= share < 1:
        raise OptionError(f"the held-out share must be in [0, 1), got {share}")
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        by_class.setdefault(c, []).append(i)
    held = []
    for c, idx in by_class.items():
        k = min(max(round(share * len(idx)), 1), len(idx) - 1) if share > 0 else 0
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(c.encode()))
        held += [idx[j] for j in torch.randperm(len(idx), generator=g)[:k].tolist()]
    held = sorted(held)
    taken = set(held)
    return [i for i in range(len(classes)) if i not in taken], held


def split(data, share: float, seed: int = 0):
    """(training part, held-out part) of a data set, as `torch.utils.data.Subset`s (see `held_out`)."""
    kept, held = held_out(item_classes(data), share, seed)
    return torch.utils.data.Subset(data, kept), torch.utils.data.Subset(data, held)


# --------------------------------------------------------------------------------------------------
# Thresholds


def threshold_at(scores: torch.Tensor, fpr: float) -> float:
    """The (floor(fpr * n) + 1)-th highest of n normal scores: at most fpr * n of them lie above it."""
    s = scores.detach().flatten().float()
    if s.numel() == 0:
        raise ValueError("no normal scores to set a threshold on")
    if not 0 <= fpr < 1:
        raise OptionError(f"the false-alarm rate must be in [0, 1), got {fpr}")
    k = math.floor(fpr * s.numel() + 1e-9)
    return float(s.topk(k + 1).values[-1])


def fpr_upper_bound(false_alarms: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a false-alarm rate seen as `false_alarms` out of `n`."""
    if false_alarms >= n:
        return 1.0

    def cdf(p):  # P(X <= false_alarms) for X ~ Binomial(n, p)
        return sum(math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                            + j * math.log(p) + (n - j) * math.log1p(-p)) for j in range(false_alarms + 1))

    lo, hi = false_alarms / n, 1.0
    for _ in range(60):  # the p at which seeing this few false alarms becomes a 5% event
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - confidence else (lo, mid)
    return hi


def _entry(scores: torch.Tensor, maps: torch.Tensor, fpr: float, pixel_fpr: float) -> dict:
    t = threshold_at(scores, fpr)
    alarms = int((scores > t).sum())
    return {"image": t, "pixel": threshold_at(maps, pixel_fpr), "images": int(scores.numel()),
            "false_alarms": alarms, "fpr_upper": fpr_upper_bound(alarms, int(scores.numel())),
            "pixels": int(maps.numel())}


def calibrate(scores, maps, classes, fpr: float = DEFAULT_FPR, pixel_fpr: float = DEFAULT_PIXEL_FPR,
              source: str = "") -> dict:
    """The calibration record (plain data, stored in the checkpoint) from normal images' scores (N,) and maps.

    classes: the class of each image. Returns {"fpr", "pixel_fpr", "source", "method", "date", "classes":
    {c: entry}, "global": entry, "warnings": [...]} where an entry holds the image and pixel thresholds, the
    count of images they rest on, the false alarms among them and the 95% upper bound of the rate.
    """
    if len(classes) != scores.numel() or maps.shape[0] != scores.numel():
        raise ValueError(f"{scores.numel()} scores, {maps.shape[0]} maps and {len(classes)} class names: one each")
    idx: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        idx.setdefault(c, []).append(i)
    entries = {c: _entry(scores[i], maps[i], fpr, pixel_fpr) for c, i in sorted(idx.items())}
    warnings = [too_few(c, e["images"], fpr, e["fpr_upper"]) for c, e in entries.items()
                if e["images"] < math.ceil(1 / fpr - 1e-9)] if fpr > 0 else []
    return {"fpr": fpr, "pixel_fpr": pixel_fpr, "source": source, "method": METHOD,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "classes": entries,
            "global": _entry(scores, maps, fpr, pixel_fpr), "warnings": warnings}


def too_few(cls: str, n: int, fpr: float, upper: float) -> str:
    return (f"class {cls!r}: the {100 * fpr:g}% false-alarm threshold rests on {n} normal image(s); "
            f"{math.ceil(1 / fpr - 1e-9)} are needed to resolve that rate, so it is their highest score and the "
            f"real rate may be up to {100 * upper:.0f}% (95% bound) -- hold out more, or calibrate on a folder of "
            f"normal images")


def thresholds_for(calibration: dict, cls: str | None) -> tuple[str, dict]:
    """(the class name used, its entry): a calibrated class, or the global entry for None."""
    if cls is None:
        return GLOBAL, calibration["global"]
    if cls not in calibration["classes"]:
        raise OptionError(f"unknown class {cls!r}: this model was calibrated for {sorted(calibration['classes'])}; "
                         f"pass one of them, or no class for the global threshold")
    return cls, calibration["classes"][cls]


# --------------------------------------------------------------------------------------------------
# Decisions


class Prediction(tuple):
    """What `UniAD.predict` returns: the pair (scores, maps) it always returned -- `scores, maps =
    model.predict(images)` and any tuple use still work -- with the decision as attributes:

    scores (B,) and maps (B, H, W) (higher = more anomalous). With a calibrated model, also: the class whose
    thresholds decided each image (`GLOBAL` for the pooled one), the image and pixel thresholds (B,),
    decisions (B,) bool (True = anomalous) and masks (B, H, W) bool (empty where the decision is normal);
    None without calibration.
    """

    def __new__(cls, scores, maps, classes=None, thresholds=None, pixel_thresholds=None, decisions=None, masks=None):
        self = super().__new__(cls, (scores, maps))
        self.classes, self.thresholds, self.pixel_thresholds = classes, thresholds, pixel_thresholds
        self.decisions, self.masks = decisions, masks
        return self

    @property
    def scores(self) -> torch.Tensor:
        return self[0]

    @property
    def maps(self) -> torch.Tensor:
        return self[1]

    @property
    def areas(self) -> torch.Tensor | None:
        """Defect area in pixels of each mask (B,), or None uncalibrated."""
        return None if self.masks is None else self.masks.flatten(1).sum(1)

    def __repr__(self) -> str:
        state = "uncalibrated" if self.decisions is None else f"{int(self.decisions.sum())} anomalous"
        return f"Prediction({self.scores.numel()} images, {state})"


def decide(scores: torch.Tensor, maps: torch.Tensor, calibration: dict | None, classes=None) -> Prediction:
    """A Prediction from scores (B,) and maps (B, H, W). classes: one name for all, one per image, or None
    (the global threshold); an unknown name is a ValueError naming the calibrated classes."""
    if calibration is None:
        if classes is not None:
            raise OptionError("this model is not calibrated, so it has no per-class thresholds: calibrate it first "
                             "(UniAD.calibrate, or uniad-mini train --holdout / uniad-mini calibrate)")
        return Prediction(scores, maps)
    names = classes if isinstance(classes, (list, tuple)) else [classes] * scores.numel()
    if len(names) != scores.numel():
        raise OptionError(f"{len(names)} class names for {scores.numel()} images; pass one name, one per image, or None")
    used, entries = zip(*(thresholds_for(calibration, c) for c in names))
    t = torch.tensor([e["image"] for e in entries], dtype=scores.dtype)
    p = torch.tensor([e["pixel"] for e in entries], dtype=maps.dtype)
    decisions = scores > t
    masks = (maps > p[:, None, None]) & decisions[:, None, None]
    return Prediction(scores, maps, list(used), t, p, decisions, masks)


@torch.no_grad()
def measure(calibration: dict, scores, maps, labels, masks, classes, use_global: bool = False) -> dict:
    """What the thresholds catch on labelled images (never used to set them): per class and over all,
    {"normal": n, "false_alarms": k, "fpr": k/n, "defects": m, "caught": j, "recall": j/m,
     "pixel_fpr": share of normal pixels in the masks, "pixel_recall": share of defect pixels in the masks}."""
    pred = decide(scores, maps, calibration, None if use_global else list(classes))
    idx: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        idx.setdefault(c, []).append(i)
    out = {}
    for c, i in [*sorted(idx.items()), ("all", list(range(len(classes))))]:
        i = torch.tensor(i)
        lab, dec, m, pm = labels[i].bool(), pred.decisions[i], masks[i].bool(), pred.masks[i]
        n, d = int((~lab).sum()), int(lab.sum())
        k, j = int((dec & ~lab).sum()), int((dec & lab).sum())
        out[c] = {"normal": n, "false_alarms": k, "fpr": k / n if n else float("nan"), "defects": d, "caught": j,
                  "recall": j / d if d else float("nan"),
                  "pixel_fpr": float((pm & ~m).sum() / max(int((~m).sum()), 1)),
                  "pixel_recall": float((pm & m).sum() / m.sum()) if m.any() else float("nan")}
    return out
