"""`report.html`: one self-contained page that `evaluate` and `predict` write, for a person to look at a run.

    metrics table   per class (evaluate: the seven metrics; predict: images, flagged, thresholds)
    thresholds      the calibration: how it was set, the count it rests on, what it catches on labelled images
    charts          per class: ROC curve and score histogram (normal / defective), the threshold marked (inline SVG)
    gallery         image | heat map | predicted mask | ground truth, sorted by score, the worst misses and
                    false alarms first (labelled images only), thumbnails inlined as data URIs

No network and no external file: CSS, SVG and images are inline, and the one inline script only reports load
problems into the page itself (`#page-check`: "ok" once every image decoded, else what failed), which is what
the headless-browser test reads. Memory stays bounded: the gallery holds `GALLERY` thumbnails at most.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import calibration as C
from .. import metrics as M
from ..calibration import GLOBAL
from ..evaluation import ALL_METRICS, HEADERS
from ..pictures import PNG, heat, to_uint8

GALLERY = 120  # most images shown; the rest are in the CSV / results.json
THUMB = 144  # thumbnail side in pixels
COLOURS = {"normal": "#1f77b4", "defect": "#d62728"}

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{font-size:22px}h2{margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.warn{color:#a40}.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}figcaption{font-size:12px;color:#555}.gallery{display:flex;flex-wrap:wrap;gap:12px}
.item{border:2px solid #ccc;padding:4px;font-size:12px}.item.miss{border-color:#d62728}.item.alarm{border-color:#ff7f0e}
.item img{width:""" + str(THUMB) + """px;height:auto;image-rendering:pixelated;margin-right:2px}"""

CHECK = """<script>
(function(){var errs=[];window.addEventListener('error',function(e){var t=e.target;
errs.push(t&&t.tagName?('could not load '+t.tagName+' '+(t.src||'').slice(0,60)):('script error: '+e.message));},true);
window.addEventListener('load',function(){var imgs=document.images,bad=0;for(var i=0;i<imgs.length;i++){
if(!imgs[i].complete||imgs[i].naturalWidth===0)bad++;}if(bad)errs.push(bad+' image(s) did not decode');
var p=document.getElementById('page-check');p.textContent=errs.length?errs.join('; '):'ok';
p.setAttribute('data-images',imgs.length);});})();
</script>"""


def esc(x) -> str:
    return html.escape(str(x))


def data_uri(image: Image.Image) -> str:
    """A small PIL image as an inline PNG data URI."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", **PNG)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumb(array: np.ndarray) -> str:
    """(H, W, 3) or (H, W) uint8 -> a data URI of at most THUMB a side."""
    im = Image.fromarray(array)
    im.thumbnail((THUMB, THUMB), Image.BILINEAR if array.ndim == 3 else Image.NEAREST)
    return data_uri(im)


def tiles(image: torch.Tensor, amap: torch.Tensor, vmin: float, vmax: float, mask=None, truth=None) -> list:
    """[(caption, data URI)]: the image, its heat map (scaled from vmin..vmax), the predicted mask, the truth."""
    scaled = (amap.float().cpu().numpy() - vmin) / max(vmax - vmin, 1e-12)
    out = [("image", thumb(to_uint8(image))), ("heat map", thumb(heat(scaled)))]
    for name, m in (("predicted mask", mask), ("ground truth", truth)):
        if m is not None:
            out.append((name, thumb((m.cpu().numpy() > 0).astype(np.uint8) * 255)))
    return out


# --------------------------------------------------------------------------------------------------
# Charts (inline SVG)


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
            f'<title>{esc(title)}</title><rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>")


def histogram_svg(scores, labels, threshold: float | None, title: str, other: float | None = None) -> str:
    """Score histogram, normal and defective images apart (labels None: one colour), thresholds as lines."""
    s = np.asarray(scores, dtype=np.float64)
    W, H, L, B = 360, 200, 40, 30
    marks = [t for t in (threshold, other) if t is not None and math.isfinite(t)]
    lo, hi = min([s.min(), *marks]), max([s.max(), *marks])
    hi = hi if hi > lo else lo + 1
    edges = np.linspace(lo, hi, 25)
    groups = {"all": s} if labels is None else {"normal": s[np.asarray(labels) == 0], "defect": s[np.asarray(labels) == 1]}
    counts = {k: np.histogram(v, edges)[0] for k, v in groups.items()}
    top = max(1, max(int(c.max()) for c in counts.values()))
    x = lambda v: L + (v - lo) / (hi - lo) * (W - L - 10)  # noqa: E731
    body = [f'<text x="{L}" y="14" font-size="12">{esc(title)}</text>',
            f'<line x1="{L}" y1="{H - B}" x2="{W - 10}" y2="{H - B}" stroke="black"/>']
    for k, c in counts.items():
        colour = COLOURS.get(k, "#555")
        for i, n in enumerate(c):
            if n:
                h = n / top * (H - B - 24)
                body.append(f'<rect x="{x(edges[i]):.1f}" y="{H - B - h:.1f}" width="{x(edges[i + 1]) - x(edges[i]):.1f}" '
                            f'height="{h:.1f}" fill="{colour}" fill-opacity="0.5"/>')
    for t, dash, name, y in ((threshold, "", "threshold", 30), (other, ' stroke-dasharray="4 3"', "global", 44)):
        if t is not None and math.isfinite(t):
            anchor = "end" if x(t) > W * 0.7 else "start"  # the label stays inside the plot
            body.append(f'<line x1="{x(t):.1f}" y1="20" x2="{x(t):.1f}" y2="{H - B}" stroke="black"{dash}/>'
                        f'<text x="{x(t) + (-3 if anchor == "end" else 3):.1f}" y="{y}" font-size="11" '
                        f'text-anchor="{anchor}">{name} {t:.3g}</text>')
    body.append(f'<text x="{L}" y="{H - 8}" font-size="11">{lo:.3g}</text><text x="{W - 60}" y="{H - 8}" '
                f'font-size="11">{hi:.3g}</text><text x="{W // 2 - 20}" y="{H - 8}" font-size="11">score</text>')
    legend = " ".join(f'<tspan fill="{COLOURS.get(k, "#555")}">{k} ({len(v)})</tspan>' for k, v in groups.items())
    body.append(f'<text x="{W - 150}" y="14" font-size="11">{legend}</text>')
    return _svg(W, H, body, title)


def roc_svg(scores, labels, threshold: float | None, title: str) -> str:
    """The image ROC curve with the threshold's operating point marked (needs both kinds of image)."""
    fpr, tpr, _ = M.roc_curve(np.asarray(scores), np.asarray(labels))
    S, L = 200, 36
    pts = " ".join(f"{L + f * S:.1f},{10 + (1 - t) * S:.1f}" for f, t in zip(fpr, tpr))
    body = [f'<rect x="{L}" y="10" width="{S}" height="{S}" fill="none" stroke="black"/>',
            f'<line x1="{L}" y1="{10 + S}" x2="{L + S}" y2="10" stroke="#aaa" stroke-dasharray="4 4"/>',
            f'<polyline points="{pts}" fill="none" stroke="{COLOURS["defect"]}" stroke-width="2"/>',
            f'<text x="{L}" y="{S + 30}" font-size="11">false-alarm rate</text>',
            f'<text x="2" y="{S // 2}" font-size="11">recall</text>']
    if threshold is not None:
        s, y = np.asarray(scores), np.asarray(labels).astype(bool)
        f, t = float((s[~y] > threshold).mean()), float((s[y] > threshold).mean())
        body.append(f'<circle cx="{L + f * S:.1f}" cy="{10 + (1 - t) * S:.1f}" r="5" fill="black"/>'
                    f'<text x="{L + f * S + 8:.1f}" y="{10 + (1 - t) * S + 14:.1f}" font-size="11">threshold: '
                    f'FPR {100 * f:.0f}%, recall {100 * t:.0f}%</text>')
    return _svg(S + L + 130, S + 40, body, title)


# --------------------------------------------------------------------------------------------------
# The page


def _table(header: list[str], rows: list[list], table_id: str) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def metrics_rows(results: dict) -> tuple[list[str], list[list]]:
    keys = [k for k in ALL_METRICS if k in results.get("mean", {})]
    fmt = lambda v: "-" if v != v else f"{100 * v:.1f}"  # noqa: E731  (NaN: undefined for that class)
    return ["class"] + [HEADERS[k] for k in keys], [[c] + [fmt(r[k]) for k in keys] for c, r in results.items()]


def calibration_rows(cal: dict, checked: dict | None) -> tuple[list[str], list[list]]:
    header = ["class", "normal images it rests on", "image threshold", "false alarms there (95% bound)",
              "pixel threshold"]
    if checked:
        header += ["labelled here: FPR", "recall"]
    rows = []
    for c, e in [*cal["classes"].items(), (GLOBAL, cal["global"])]:
        row = [c, e["images"], f"{e['image']:.4g}", f"{e['false_alarms']} ({100 * e['fpr_upper']:.0f}%)",
               f"{e['pixel']:.4g}"]
        if checked:
            m = checked.get(c) or {}
            pct = lambda v: "-" if v is None or v != v else f"{100 * v:.1f}%"  # noqa: E731
            row += [pct(m.get("fpr")), pct(m.get("recall"))]
        rows.append(row)
    return header, rows


def gallery_order(items: list[dict]) -> list[dict]:
    """Misses (defects decided normal, lowest score first), false alarms (highest first), then by score."""
    def key(it):
        label, decision, s = it.get("label"), it.get("decision"), it["score"]
        if label == 1 and decision is False:
            return (0, s)
        if label == 0 and decision is True:
            return (1, -s)
        return (2, -s)
    return sorted(items, key=key)


def write_report(path, title: str, meta: list[str], table: tuple[list[str], list[list]], charts: list[str],
                 gallery: list[dict], calibration: dict | None = None, checked: dict | None = None,
                 notes: list[str] = (), total: int | None = None) -> Path:
    """Write the page atomically (a .tmp renamed). gallery: dicts with "title", "score", "tiles" [(caption,
    uri)], and where known "label" (0/1) and "decision" (bool); shown in `gallery_order`, GALLERY at most
    (total: how many images there were, when `gallery` was already cut)."""
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
             f"<style>{CSS}</style>{CHECK}</head><body>", f"<h1>{esc(title)}</h1>",
             "".join(f"<p>{esc(m)}</p>" for m in meta), '<p>page check: <span id="page-check">loading</span></p>']
    parts += [f'<p class="warn">{esc(n)}</p>' for n in notes]
    parts += ["<h2>Per class</h2>", _table(*table, "metrics")]
    if calibration is not None:
        parts += ["<h2>Thresholds</h2>", f"<p>{esc(calibration['method'])}. Set on {esc(calibration['source'])} at "
                  f"{100 * calibration['fpr']:g}% false alarms (pixels {100 * calibration['pixel_fpr']:g}%), "
                  f"{esc(calibration['date'])}. Rates on labelled images are measured after, never used to set a "
                  f"threshold.</p>", _table(*calibration_rows(calibration, checked), "thresholds")]
        parts += [f'<p class="warn">{esc(w)}</p>' for w in calibration["warnings"]]
    else:
        parts.append("<p>Not calibrated: scores only, no decisions (train --holdout, or uniad-mini calibrate).</p>")
    parts += ["<h2>Scores</h2>", '<div class="charts">', *[f"<figure>{c}</figure>" for c in charts], "</div>"]
    shown = gallery_order(gallery)[:GALLERY]
    parts += [f"<h2>Gallery</h2><p>{len(shown)} of {total or len(gallery)} images, the worst misses and false alarms "
              f"first, then by score (red border: a missed defect; orange: a false alarm).</p>", '<div class="gallery" id="gallery">']
    for it in shown:
        kind = "miss" if it.get("label") == 1 and it.get("decision") is False else \
            "alarm" if it.get("label") == 0 and it.get("decision") is True else ""
        imgs = "".join(f'<img src="{u}" alt="{esc(c)}" title="{esc(c)}">' for c, u in it["tiles"])
        parts.append(f'<div class="item {kind}"><div>{esc(it["title"])}</div>{imgs}</div>')
    parts.append("</div></body></html>")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("\n".join(parts), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def class_charts(scores, labels, classes, calibration: dict | None) -> list[str]:
    """Per class: a histogram (and a ROC curve where both kinds of image exist), thresholds marked."""
    scores, out = np.asarray(scores, dtype=np.float64), []
    for c in sorted(set(classes)):
        idx = [i for i, k in enumerate(classes) if k == c]
        s = scores[idx]
        lab = None if labels is None or any(labels[i] is None for i in idx) else np.asarray([labels[i] for i in idx])
        t = g = None
        if calibration is not None:
            t = calibration["classes"].get(c, calibration["global"])["image"]
            g = calibration["global"]["image"] if c in calibration["classes"] else None
        out.append(histogram_svg(s, lab, t, f"{c}: image scores", g))
        if lab is not None and 0 < lab.sum() < len(lab):
            out.append(roc_svg(s, lab, t, f"{c}: ROC"))
    return out


def checked_rows(cal: dict, scores, maps, labels, masks, classes) -> dict:
    """{class: measure at its own threshold, GLOBAL: measure of the pooled threshold over all} on labelled images."""
    out = {}
    if set(classes) <= set(cal["classes"]):
        out = {c: m for c, m in C.measure(cal, scores, maps, labels, masks, classes).items() if c != "all"}
    out[GLOBAL] = C.measure(cal, scores, maps, labels, masks, classes, use_global=True)["all"]
    return out


def evaluation_report(model, cache, data, results: dict, path, title: str, meta: list[str] = ()) -> Path:
    """report.html of `evaluate`: the metrics, the thresholds checked on these labelled images, the charts and
    a gallery (thumbnails made for the shown images only). data: the data set `cache` came from."""
    scores, maps = model.score_features(cache.features)
    cal, labels = model.calibration, cache.labels
    decisions, checked = [None] * len(labels), None
    if cal is not None:
        names = [c if c in cal["classes"] else None for c in cache.classes]
        decisions = C.decide(scores, maps, cal, names).decisions.tolist()
        checked = checked_rows(cal, scores, maps, labels, cache.masks, cache.classes)
    items = [{"i": i, "score": float(scores[i]), "label": int(labels[i]), "decision": decisions[i]}
             for i in range(len(labels))]
    shown = gallery_order(items)[:GALLERY]
    scale = {}
    for c, idx in cache.class_indices().items():
        pixel = cal["classes"].get(c, cal["global"])["pixel"] if cal else None
        scale[c] = (0.0, 2 * pixel) if pixel else (float(maps[idx].min()), float(maps[idx].max()))
    for it in shown:
        i, c = it["i"], cache.classes[it["i"]]
        pixel = cal["classes"].get(c, cal["global"])["pixel"] if cal else None
        mask = (maps[i] > pixel) & bool(it["decision"]) if pixel is not None else None
        image = data[i]["image"]
        name = Path(cache.paths[i]).name if cache.paths else str(i)
        it.update(title=f"{c}/{Path(cache.paths[i]).parent.name if cache.paths else ''}/{name} score {it['score']:.3g}",
                  tiles=tiles(image, maps[i], *scale[c], mask, cache.masks[i]))
    charts = class_charts(scores.tolist(), labels.tolist(), cache.classes, cal)
    return write_report(path, title, list(meta), metrics_rows(results), charts, shown, cal, checked, total=len(items))
