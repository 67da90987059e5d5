"""The course's assignments: students write UniAD's key parts themselves (paper Sec. 3.1-3.5, the training of Sec. 4.1,
the AUROC of Sec. 4.1 and the linear analysis of the identical shortcut).

Each student part is a block inside a function body of the package, between nbgrader's markers `### BEGIN
SOLUTION` and `### END SOLUTION`, after `### HINT:` lines (the first hint: the idea, not the code). The block holds
the reference solution, so the package works and reads as it always did. ASSIGNMENTS lists the parts; each
assignment's graded tests are `graded_tests/test_graded_<name>.py` (their points, visible and hidden tests there).

    stripping.strip(out)        the student copy (parts raise their hint; hidden tests and teacher's key left out)
    grading.grade_submission    the instructor's tests on a copy; grading.write_gradebook for a class
    grading.check(name)         a notebook checkpoint: the tests this installation holds, on its own package
    parts(name), hint(name, 2)  where a part is; the second hint (the API) when the first was not enough

`uniad-mini course strip OUT | grade DIR [DIR ...] [--csv F] [--json F] | hint NAME [LEVEL] | parts NAME` run
them (course/commands.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .stripping import BEGIN, HINT, CourseError  # noqa: F401 (CourseError: the one error type of the course)


@dataclass(frozen=True)
class Assignment:
    name: str
    title: str
    functions: tuple[str, ...]  # "module.qualname" in uniad_mini, each holding one marked block
    notebook: str  # in notebooks/assignments/
    api_hint: str  # the second hint: which calls do it (the first, the idea, sits in the source above the part)


ASSIGNMENTS = (
    Assignment("masks", "the neighbor mask (Sec. 3.3)", ("neighbors.neighbor_mask",), "01_masks_and_attention",
               "torch.arange for the row and column of every token; broadcasting [:, None] against [None, :] "
               "compares every query with every key at once; .abs() and & combine the two conditions"),
    Assignment("attention", "attention by hand, the plain PyTorch path (Sec. 3.3)", ("attention.attend_by_hand",),
               "01_masks_and_attention",
               "@ and .transpose(-2, -1); math.sqrt; _cached_mask(h, w, kh, kw, str(q.device)) is True where blocked; "
               "masked_fill with float('-inf'); .softmax over the keys; F.dropout with training=True"),
    Assignment("jitter", "feature jittering (Sec. 3.4, Eq. 4)", ("transformer.feature_jitter",),
               "02_jitter_and_layerwise_query",
               "x.norm(dim=-1, keepdim=True) / x.shape[-1]; torch.randn_like(x); one torch.rand(()) draw decides "
               "a skip with prob < 1"),
    Assignment("layerwise_query", "the decoder's layer-wise query (Sec. 3.2)",
               ("transformer.ReconstructionTransformer.forward",), "02_jitter_and_layerwise_query",
               "self.queries[l] is a (N, D) table: .expand(batch, -1, -1) gives every image the same one; "
               "prev holds the last decoder output"),
    Assignment("feature_stack", "multi-scale feature stacking (Sec. 3.1)", ("backbone.feature_stack",),
               "03_features_and_scores",
               "F.interpolate to the last tap's .shape[-2:], mode 'bilinear', align_corners=True; torch.cat on channels"),
    Assignment("scores", "anomaly map and image score (Sec. 3.5)", ("scoring.anomaly_map", "scoring.image_score"),
               "03_features_and_scores",
               "map: the norm over dim 1 (keep it for F.interpolate, mode 'bilinear', align_corners=True); "
               "score: F.avg_pool2d needs a channel axis, stride 1; .amax over every axis but the batch"),
    Assignment("auroc", "image and pixel AUROC by hand (Sec. 4.1)", ("metrics.auroc",), "04_metrics_auroc",
               "np.sort the normal scores; np.searchsorted(neg, pos, side='left') counts those below each anomalous "
               "score, side='right' those below or tied; integers keep it exact"),
    Assignment("training_step", "the training step: the loss on the clean target, jitter in training mode only "
               "(Sec. 3.4, 4.1)", ("training.train_step", "transformer.ReconstructionTransformer.jitter_in_training"),
               "05_training_and_layers",
               "F.mse_loss (out in fp32, against which x?); the optimizer's zero_grad, then backward, then step; "
               "nn.utils.clip_grad_norm_ over model.parameters() when grad_clip; .detach(); self.training"),
    Assignment("layer_wiring", "the encoder and decoder layers' wiring (Sec. 3.2-3.3, Fig. 3)",
               ("transformer.EncoderLayer.forward", "transformer.DecoderLayer.forward"), "05_training_and_layers",
               "self.attn(query, key, value, **mask_args); pos is added where a token is looked up (query, key), "
               "not to what it hands over (value); self.drop on the attention's output; norm1 .. norm3 in order"),
    Assignment("gd_closed_form", "analysis: the closed-form trajectory of gradient descent on a linear layer "
               "(Sec. 3.1, notebook 02)", ("shortcut.identity.gd_factors",), "06_gd_closed_form",
               "with C = len(lam) and k a (K, 1) float64 column of the steps, one broadcast power gives (K, C)"),
    Assignment("copy_measure", "the copy measure: how close a token's Jacobian block is to the identity, and a "
               "model made to copy (Sec. 3.1)", ("shortcut.identity.copy_measures",), "07_make_it_copy",
               "J[:, i] is the block J_ii, (rows, C); torch.eye(C), indexed by rows when given; .norm() of a tensor "
               "is its Frobenius norm; .pow(2).sum(dim=...) over both channel axes gives every block's energy at "
               "once; .item() for plain floats"),
    Assignment("remedy_ablation", "one remedy ablated: feature jittering around a model that copies (Sec. 3.4, "
               "Eq. 4)", ("shortcut.copying.Jittered.forward",), "08_one_remedy_ablated",
               "self.training and self.scale; x.norm(dim=1, keepdim=True) is (B, 1, h, w), one norm per token; "
               "x.shape[1] is C; torch.randn_like(x); then self.inner reads the result"),
    Assignment("unified", "the unified and the separate setting: which images train and which test each model "
               "(Sec. 4.1, Tables 1-2)", ("unified.setting_groups", "unified.score_groups"),
               "09_unified_vs_per_class",
               "groups: torch.arange(len(train)); cache.class_indices() is {class: [positions]} sorted by name; "
               "torch.tensor(..., dtype=torch.long); a set difference finds a test class with no training image. "
               "score: train.subset(positions); test.features[positions]; new_zeros; index assignment scores[at] = ..."),
)
BY_NAME = {a.name: a for a in ASSIGNMENTS}


def package_root() -> Path:
    """The project folder holding the imported `uniad_mini` package (a checkout or a student copy)."""
    return Path(__file__).resolve().parents[2]


def project_dir(path) -> Path:
    """`path` resolved, when it is a copy of the project (uniad_mini/__init__.py); else a CourseError."""
    root = Path(path).resolve()
    if not (root / "uniad_mini" / "__init__.py").is_file():
        raise CourseError(f"{path} is not a copy of the project (it has no uniad_mini/__init__.py)")
    return root


def assignment(name: str) -> Assignment:
    if name not in BY_NAME:
        raise CourseError(f"unknown assignment {name!r}; choose from {', '.join(BY_NAME)}")
    return BY_NAME[name]


def hint(name: str, level: int = 2) -> str:
    """Hint 1 (the idea, also the text the stripped part raises) or hint 2 (the calls that do it)."""
    a = assignment(name)
    if level == 2:
        return a.api_hint
    return " / ".join(h for _, _, h in _locations(a))


def resolve(qualname: str):
    """The function or method `qualname` ("attention.attend_by_hand", "transformer.EncoderLayer.forward") of the
    `uniad_mini` that is imported: the checkout's, or a student copy's."""
    import importlib

    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module("uniad_mini." + ".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"no module of uniad_mini holds {qualname!r}")


def _locations(a: Assignment):
    """(qualname, file and line, hint 1) of each part of an assignment, in a checkout or a student copy."""
    import inspect

    for qualname in a.functions:
        obj = resolve(qualname)
        lines, first = inspect.getsourcelines(obj)
        for i, line in enumerate(lines):  # the block, or in a student copy the raise that replaced it
            word = line.strip()
            if word == BEGIN or word.startswith("raise NotImplementedError(") and i and lines[i - 1].strip().startswith(HINT):
                hints = []
                for before in reversed(lines[:i]):
                    if not before.strip().startswith(HINT):
                        break
                    hints.insert(0, before.strip()[len(HINT):].strip())
                yield qualname, f"{Path(inspect.getsourcefile(obj)).relative_to(package_root())}, line {first + i}", \
                    " ".join(hints)


def parts(name: str) -> None:
    """Print where an assignment's parts are (file, line) and their first hint: what to open and write."""
    for qualname, where, first in _locations(assignment(name)):
        print(f"{qualname}: {where}\n    hint: {first}")
