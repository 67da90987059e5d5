"""The paper's Fig. 5a, made runnable: training loss and detection AUROC along training, per reconstructor.

The paper's claim (Sec. 3.1, Fig. 5a, over 1000 epochs): while the training loss keeps falling, the image and
pixel AUROC of an MLP and a CNN peak and then drop (they learn the identical shortcut), a plain transformer's
drop less, and UniAD's do not drop. `fig5a` trains the reconstructors of `reconstructors.build` on the same
standardised features with the one loop and records the loss and AUROCs every few epochs; `fig5a_summary`
compares each curve with the claim, and `fig5a_report` / `fig5a_spread_report` print what was observed in how
many epochs, against a drop threshold and a margin. A run far shorter than the paper's can show a drop; it
cannot show that none would come later, so the text says "not observed in N epochs", never "does not hold".
"""
from __future__ import annotations

import time

import torch

from ..evaluation import markdown_table
from .experiments import adam_settings, aurocs_and_ratio, prepare, train_loss
from ..features import Cache
from .identity import jacobian_identity
from .reconstructors import WIDE, build
from ..training import train


def fig5a(train_cache: Cache, test_cache: Cache, names=("mlp", "cnn3x3", "transformer", "uniad"), epochs: int = 16,
          eval_every: int = 2, size: str = "small", lr: float = 1e-3, batch_size: int = 8, seed: int = 0,
          log=print, return_models: bool = False, jacobian_positions=((7, 7), (3, 10)), jacobian_rows=None):
    """Train each reconstructor (`reconstructors.build` names: "transformer" at `size`, "transformer-wide" at
    the size wide enough to copy, ...) on the same standardised training features with the one loop (plain Adam,
    constant learning rate: `adam_settings`);
    before training, every `eval_every` epochs and at the end, record

        {"model", "epoch", "loss", "image_auroc", "pixel_auroc" (unweighted means over classes),
         "per_class": {cls: {"image_auroc", "pixel_auroc"}}, "ratio" (anomalous / normal token error),
         "seconds" (since this model started)}

    and in each model's last record also "jacobian": `identity.jacobian_identity` on the first normal test image
    at `jacobian_positions` (with `jacobian_rows`; positions None: not measured), the one identity measure of
    every reconstructor: ||J_ii - I|| / ||I|| and x_i's share of y_i's sensitivity.

    AUROCs are fractions in [0, 1]. Every AUROC is on the test set along training: this shows the curve,
    it selects nothing. With return_models=True, return (records, {name: trained model}) instead.
    """
    data = prepare(train_cache, test_cache)
    records, models = [], {}
    for name in names:
        torch.manual_seed(seed)
        model = build(name, data.channels, data.grid, size)
        start = time.perf_counter()

        def record(m, epoch, loss, state=None):
            if epoch % eval_every and epoch != epochs:
                return
            res, ratio = aurocs_and_ratio(m, data)  # one reconstruction of the test set for both
            r = {"model": name, "epoch": epoch, "loss": loss, **res.pop("mean"), "per_class": res,
                 "ratio": ratio["ratio"], "seconds": time.perf_counter() - start}
            records.append(r)
            if log:
                log(f"{name:12s} epoch {epoch:3d}  loss {loss:.4f}  image AUROC {100 * r['image_auroc']:5.1f}  "
                    f"pixel AUROC {100 * r['pixel_auroc']:5.1f}  ({r['seconds']:.0f} s)")

        record(model, 0, train_loss(model, data.train))
        train(model, data.train, adam_settings(epochs, lr, batch_size, seed), progress=False, callback=record)
        if jacobian_positions:
            normal = data.test[data.cache.labels == 0][:1]  # (1, C, h, w)
            records[-1]["jacobian"] = jacobian_identity(model, normal, jacobian_positions, jacobian_rows)
        models[name] = model
    return (records, models) if return_models else records


def curve_summary(records: list[dict], name: str, key: str, cls: str | None = None) -> dict:
    """Peak and last value of one AUROC curve (mean over classes, or one class): {"peak", "peak_epoch", "last",
    "drop" (peak - last), "loss_at_peak", "loss_last"}."""
    rs = [r for r in records if r["model"] == name]
    if not rs:
        raise ValueError(f"no records of model {name!r}")
    val = (lambda r: r[key]) if cls is None else (lambda r: r["per_class"][cls][key])  # noqa: E731
    peak = max(rs, key=val)
    return {"peak": val(peak), "peak_epoch": peak["epoch"], "last": val(rs[-1]), "drop": val(peak) - val(rs[-1]),
            "loss_at_peak": peak["loss"], "loss_last": rs[-1]["loss"], "last_epoch": rs[-1]["epoch"]}


PAPER_CLAIM = {  # the paper's Fig. 5a, per reconstructor ("transformer-wide" and "uniad-wide": as their base)
    "mlp": "drops", "cnn1x1": "drops", "cnn3x3": "drops", "linear": "drops",
    "transformer": "drops less", "uniad": "does not drop",
}
PAPER_EPOCHS = 1000  # how long the paper trains

METRICS = ("image_auroc", "pixel_auroc")


def paper_claim(name: str) -> str:
    """The paper's Fig. 5a claim for a reconstructor name ("" when it makes none); a "-wide" name has its base's."""
    return PAPER_CLAIM.get(name.removesuffix(WIDE), "")


def _points(v: float) -> float:
    """A fraction as AUROC points, rounded as printed (so a printed 1.0 and the verdict agree)."""
    return round(100 * v, 1)


def fig5a_summary(records: list[dict], drop: float | dict = 1.0) -> list[dict]:
    """One row per model: loss first and last; for each mean AUROC its peak, last value and drop (in points);
    the class curve that fell most; and whether this run agrees with the paper's claim for that model, per metric
    and overall ("holds", "holds_per_metric": True / False, None where it cannot be compared) -- agreement
    in the epochs this run trained, which for "no drop" says nothing about later epochs. A "drop" is a fall
    of at least `drop` points from the peak to the last evaluation (one number, or
    {"image_auroc": points, "pixel_auroc": points})."""
    drop = drop if isinstance(drop, dict) else {k: drop for k in METRICS}
    names = list(dict.fromkeys(r["model"] for r in records))
    classes = sorted(records[0]["per_class"])
    rows = []
    for name in names:
        rs = [r for r in records if r["model"] == name]
        curves = {k: curve_summary(records, name, k) for k in METRICS}
        worst = max(((c, k, curve_summary(records, name, k, c)) for c in classes for k in METRICS),
                    key=lambda t: t[2]["drop"])
        rows.append({"model": name, "loss_first": rs[0]["loss"], "loss_last": rs[-1]["loss"], **curves,
                     "drops": {k: _points(curves[k]["drop"]) >= drop[k] for k in METRICS},
                     "largest_drop": max(_points(curves[k]["drop"]) for k in METRICS),
                     "worst_class": {"class": worst[0], "metric": worst[1], **worst[2]}})
    dropped = [r["largest_drop"] for r in rows if paper_claim(r["model"]) == "drops" and any(r["drops"].values())]
    for row in rows:
        claim, note = paper_claim(row["model"]), ""
        if claim == "drops":  # while the loss keeps falling
            per_metric = {k: row["drops"][k] and row["loss_last"] < row["loss_first"] for k in METRICS}
        elif claim == "drops less":  # than the MLP / CNN that did drop; nothing to compare with if none did
            per_metric = {k: _points(row[k]["drop"]) < min(dropped) if dropped else None for k in METRICS}
            note = "" if dropped else "it cannot be compared: no MLP or CNN drop observed in this run"
        elif claim == "does not drop":
            per_metric = {k: not row["drops"][k] for k in METRICS}
        else:
            per_metric, note = {k: None for k in METRICS}, "the paper makes no claim for this model"
        values = list(per_metric.values())
        holds = None if None in values else all(values) if claim != "drops" else any(values)
        row.update(claim=claim, holds=holds, holds_per_metric=per_metric, note=note)
    return rows


def auroc_resolution(cache: Cache) -> tuple[str, float]:
    """(class, points): how far one (anomalous, normal) image pair of the class with the fewest pairs moves the
    mean image AUROC over classes -- drops that small are one image's worth of noise."""
    classes = sorted(set(cache.classes))
    pairs = {c: sum(1 for k, y in zip(cache.classes, cache.labels) if k == c and y)
             * sum(1 for k, y in zip(cache.classes, cache.labels) if k == c and not y) for c in classes}
    c = min(pairs, key=pairs.get)
    return c, 100 / pairs[c] / len(classes)


def drop_thresholds(cache: Cache | None, drop: float = 1.0, pairs: int = 3) -> dict:
    """The fall in points that counts as a drop, per metric: `drop`, and for image AUROC at least `pairs` image
    pairs of the class with the fewest (`auroc_resolution`), so that one image swapping ranks is not a drop."""
    image = drop if cache is None else max(drop, pairs * auroc_resolution(cache)[1])
    return {"image_auroc": round(image, 1), "pixel_auroc": drop}


def fig5a_report(records: list[dict], cache: Cache | None = None, drop: float = 1.0, pairs: int = 3) -> str:
    """The summary as text: a table, then one line per model saying whether the paper's claim holds here, with
    the numbers. With the test `cache`, an image AUROC drop must exceed `pairs` image pairs of the smallest class
    (`drop_thresholds`), and the report says how much one pair moves the mean image AUROC."""
    thresholds = drop_thresholds(cache, drop, pairs)
    rows = fig5a_summary(records, thresholds)
    pct = lambda v: f"{100 * v:5.1f}"  # noqa: E731
    header = ["model", "loss first -> last", "image AUROC peak (epoch) -> last", "pixel AUROC peak (epoch) -> last",
              "class curve that fell most", "||J_ii - I|| / ||I|| (self share) at the end"]
    last = {r["model"]: r for r in records}  # each model's last record
    table = []
    for r in rows:
        w, jac = r["worst_class"], last[r["model"]].get("jacobian")
        table.append([r["model"], f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}",
                      *(f"{pct(r[k]['peak'])} ({r[k]['peak_epoch']}) -> {pct(r[k]['last'])}" for k in METRICS),
                      f"{w['class']} {w['metric'].split('_')[0]} {pct(w['peak'])} -> {pct(w['last'])}",
                      f"{jac['identity_distance']:.3f} ({jac['self_share']:.3f})" if jac else "-"])
    lines = [markdown_table(header, table), "",
             f"A drop is a fall of at least {thresholds['image_auroc']:.1f} image / {thresholds['pixel_auroc']:.1f} "
             "pixel AUROC points from the peak to the last evaluation."]
    if cache is not None:
        c, res = auroc_resolution(cache)
        lines.append(f"One (anomalous, normal) image pair of {c} moves the mean image AUROC by {res:.1f} points; "
                     f"an image AUROC drop must be at least {pairs} such pairs.")
    lines.append("")
    for r in rows:
        lines.append(_observed_line(r, thresholds))
    return "\n".join(lines)


def _observed_line(row: dict, thresholds: dict) -> str:
    """One model's line of `fig5a_report`: what this run showed, per metric with its distance to the threshold,
    and what that says about the paper's claim in the epochs it trained."""
    n, claim = row["image_auroc"]["last_epoch"], row["claim"]
    parts = []
    for k in METRICS:
        d, t = _points(row[k]["drop"]), thresholds[k]
        parts.append(f"{k.split('_')[0]} AUROC fell {d:.1f} from its peak, " + (
            f"{d - t:.1f} beyond the {t:.1f} threshold: a drop" if row["drops"][k]
            else f"{t - d:.1f} short of the {t:.1f} threshold: no drop"))
    dropped = [k.split("_")[0] for k in METRICS if row["drops"][k]]
    if claim == "drops":
        said = (f"the drop is observed in {n} epochs ({' and '.join(dropped)} AUROC)" if row["holds"] else
                f"a drop in {n} epochs ({' and '.join(dropped)} AUROC), but with a loss that did not fall" if dropped else
                f"the drop is not observed in {n} epochs (the paper trains {PAPER_EPOCHS})")
    elif claim == "does not drop":
        said = (f"no drop in {n} epochs, as the paper reports (it trains {PAPER_EPOCHS})" if row["holds"] else
                f"a drop in {n} epochs ({' and '.join(dropped)} AUROC), where the paper reports none")
    elif claim == "drops less" and row["holds"] is not None:
        said = (f"in {n} epochs it fell less than every MLP / CNN curve that dropped" if row["holds"] else
                f"in {n} epochs it fell as far as an MLP / CNN curve that dropped, or further")
    else:
        said = row["note"]
    return (f"{row['model']} (paper: detection {claim or '-'} while the loss falls): loss {row['loss_first']:.3f} -> "
            f"{row['loss_last']:.3f}; " + "; ".join(parts) + f". So {said}.")


def fig5a_spread(runs: dict, cache: Cache | None = None, drop: float = 1.0, pairs: int = 3) -> list[dict]:
    """How far the verdicts of `fig5a_summary` can be trusted, from several runs of the same experiment
    (`runs`: {label, e.g. "seed 1": records}). Per model and metric: the drop in points in each run, their
    spread (max - min), and a verdict that holds with a margin:

        "no drop"   every run's drop is below the threshold by at least the margin,
        "drop"      every run's drop is at or above the threshold by at least the margin,
        "undecided" otherwise (some run lies within the margin of the threshold, or runs disagree),

    with margin = max(the spread, one image pair of the smallest class) for image AUROC, max(the spread, 0.5)
    for pixel AUROC: a further run can land a spread away from the ones measured. Returns
    [{"model", "metric", "drops": [points per run], "spread", "threshold", "margin", "verdict",
      "loss_ratio": [last / first loss per run]}]."""
    thresholds = drop_thresholds(cache, drop, pairs)
    pair = auroc_resolution(cache)[1] if cache is not None else 0.0
    summaries = {label: {r["model"]: r for r in fig5a_summary(recs, thresholds)} for label, recs in runs.items()}
    names = list(next(iter(summaries.values())))
    out = []
    for name in names:
        for k in METRICS:
            drops = [_points(s[name][k]["drop"]) for s in summaries.values()]
            spread = round(max(drops) - min(drops), 1)
            margin = round(max(spread, pair if k == "image_auroc" else 0.5), 1)
            t = thresholds[k]
            verdict = ("no drop" if max(drops) <= t - margin else "drop" if min(drops) >= t + margin else "undecided")
            out.append({"model": name, "metric": k, "drops": drops, "spread": spread, "threshold": t,
                        "margin": margin, "verdict": verdict,
                        "loss_ratio": [s[name]["loss_last"] / s[name]["loss_first"] for s in summaries.values()]})
    return out


def fig5a_spread_report(runs: dict, cache: Cache | None = None, drop: float = 1.0, pairs: int = 3) -> str:
    """`fig5a_spread` as a Markdown table, one row per model and metric, then the rule."""
    rows = fig5a_spread(runs, cache, drop, pairs)
    labels = list(runs)
    table = [[r["model"], r["metric"].split("_")[0], " / ".join(f"{d:.1f}" for d in r["drops"]), f"{r['spread']:.1f}",
              f"{r['threshold']:.1f}", f"{r['margin']:.1f}", r["verdict"],
              " / ".join(f"{x:.3f}" for x in r["loss_ratio"])] for r in rows]
    header = ["model", "AUROC", f"drop from the peak ({' / '.join(labels)})", "spread", "threshold", "margin",
              "verdict with the margin", f"loss last / first ({' / '.join(labels)})"]
    lines = [markdown_table(header, table), "",
             "A verdict holds with the margin when every run is on the same side of the threshold by at least "
             "the margin = max(spread, one image pair) for image AUROC, max(spread, 0.5) for pixel AUROC.", ""]
    epochs = {r["model"]: r["image_auroc"]["last_epoch"] for r in fig5a_summary(next(iter(runs.values())))}
    per_model = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        per_model[name] = {r["metric"]: r["verdict"] for r in rows if r["model"] == name}
    overall = {n: "drop" if "drop" in v.values() else "no drop" if set(v.values()) == {"no drop"} else "undecided"
               for n, v in per_model.items()}
    dropped = [n for n, v in overall.items() if paper_claim(n) == "drops" and v == "drop"]
    for name, v in overall.items():
        claim, where = paper_claim(name), f"in {len(runs)} runs of {epochs[name]} epochs"
        unsettled = f"not settled {where}: a run lies within the margin of the threshold"
        if claim == "drops":
            said = {"drop": f"the drop is observed with the margin {where}",
                    "no drop": f"the drop is not observed {where} (the paper trains {PAPER_EPOCHS})",
                    "undecided": unsettled}[v]
        elif claim == "does not drop":
            said = {"drop": f"a drop with the margin {where}, where the paper reports none",
                    "no drop": f"no drop with the margin {where}, as the paper reports (it trains {PAPER_EPOCHS})",
                    "undecided": unsettled}[v]
        elif claim == "drops less":
            said = (f"cannot be compared: no MLP or CNN drop with the margin {where}" if not dropped else
                    f"no drop with the margin {where} while an MLP / CNN dropped, as the paper reports"
                    if v == "no drop" else unsettled)
        else:
            said = "the paper makes no claim for this model"
        metrics = ", ".join(f"{k.split('_')[0]} AUROC {per_model[name][k]}" for k in METRICS)
        lines.append(f"{name}: paper says detection {claim or '-'} -> {metrics}: {said}")
    return "\n".join(lines)
