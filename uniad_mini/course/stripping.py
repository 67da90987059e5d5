"""The student copy (implements no part of the paper): every marked part becomes a raise of its hint, the hidden
tests and the teacher's key stay behind, and no line of a solution is left anywhere in the copy.

Markers (nbgrader's): in the package source, `### HINT: ...` lines, then `### BEGIN SOLUTION` ... `### END SOLUTION`
inside a function body; in the graded tests (course/graded_tests/), `### BEGIN HIDDEN TESTS` ... `### END HIDDEN TESTS`.

    strip_source(text)   marked blocks -> `raise NotImplementedError("<hint>")` at the block's indentation
    strip_hidden(text)   hidden-test blocks removed
    solution_lines(src)  the lines of every marked block (16 characters or more, comments dropped)
    strip(out)           the copy: COPIED minus LEFT_OUT; then every file is searched for every solution line:
                         a file outside the package that holds one is left out too (and named), a package file
                         that holds one is an error (the line must be marked where it repeats)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UserError

BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
DEFAULT_HINT = "write this part (notebooks/assignments/ explain it)"
COPIED = ("uniad_mini", "notebooks/assignments", "docs", "setup.py", "README.md")
LEFT_OUT = ("docs/notebooks", "docs/claims.md", "notebooks/assignments/teacher_key.md")  # results and answers
MARKED = ("uniad_mini", "kernels")  # where solution blocks live (kernels/ is not copied: the fused kernel computes
#                                     the mask and the attention, the parts of two assignments)
SKIP = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".hypothesis"}
MIN_CHARS = 16  # shorter solution lines ("return x", "else:") are everywhere and give nothing away


class CourseError(UserError):
    """A mistake the user can fix (a bad folder, unbalanced markers): the CLI prints it on one line."""


def strip_source(text: str, where: str = "<source>") -> tuple[str, int]:
    """(text with every marked block replaced by a raise of its hint, number of blocks)."""
    lines, out, hint, blocks, i = text.splitlines(keepends=True), [], [], 0, 0
    while i < len(lines):
        line, word = lines[i], lines[i].strip()
        if word == END:
            raise CourseError(f"{where}:{i + 1}: '{END}' without a '{BEGIN}' before it")
        if word != BEGIN:
            hint = hint + [word[len(HINT):].strip()] if word.startswith(HINT) else []
            out.append(line)
            i += 1
            continue
        j = next((k for k in range(i + 1, len(lines)) if lines[k].strip() in (BEGIN, END)), None)
        if j is None or lines[j].strip() != END:
            raise CourseError(f"{where}:{i + 1}: '{BEGIN}' without its '{END}'")
        indent = line[: len(line) - len(line.lstrip())]
        if not lines[j].startswith(indent + "#"):
            raise CourseError(f"{where}:{j + 1}: '{END}' must sit at the indentation of its '{BEGIN}'")
        out.append(f"{indent}raise NotImplementedError({json.dumps(' '.join(hint) or DEFAULT_HINT)})\n")
        blocks, hint, i = blocks + 1, [], j + 1
    return "".join(out), blocks


def strip_hidden(text: str, where: str = "<tests>") -> str:
    """The graded tests without their hidden blocks (markers included)."""
    out, hidden = [], False
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        word = line.strip()
        if word in (HIDDEN_BEGIN, HIDDEN_END):
            if hidden == (word == HIDDEN_BEGIN):
                raise CourseError(f"{where}:{n}: unbalanced '{word}'")
            hidden = word == HIDDEN_BEGIN
        elif not hidden:
            out.append(line)
    if hidden:
        raise CourseError(f"{where}: '{HIDDEN_BEGIN}' without its '{HIDDEN_END}'")
    return "".join(out)


def normalise(line: str) -> str:
    """A code line without its comment and with single spaces: what the solution search compares."""
    return " ".join(re.sub(r"\s+#.*$", "", line.strip()).split())


def solution_lines(src: Path) -> dict[str, str]:
    """{normalised line: "file:line"} of every line inside a marked block of the project at `src`, but those that
    the package also holds outside any block (`if window is not None:` gives no part away)."""
    found, elsewhere = {}, set()
    for part in MARKED:
        for f in sorted((src / part).rglob("*.py")) if (src / part).is_dir() else []:
            inside = False
            for n, line in enumerate(f.read_text().splitlines(), 1):
                word = line.strip()
                if word in (BEGIN, END):
                    inside = word == BEGIN
                elif inside and not word.startswith("#") and len(normalise(line)) >= MIN_CHARS:
                    found.setdefault(normalise(line), f"{f.relative_to(src)}:{n}")
                elif not inside and part == "uniad_mini" and "graded_tests" not in f.parts:
                    elsewhere.add(normalise(line))
    return {line: where for line, where in found.items() if line not in elsewhere}


def _text(path: Path) -> str | None:
    """A file's searchable text (a notebook's cell sources), or None for a binary file."""
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return None
    if path.suffix == ".ipynb":
        try:
            return "\n".join("".join(c.get("source", "")) for c in json.loads(text).get("cells", []))
        except ValueError:
            return text
    return text


def leaks(folder: Path, lines: dict[str, str]) -> dict[str, list[str]]:
    """{file of `folder`: [solution lines it holds]}, searching every text file line by line."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = _text(f)
        if text is None:
            continue
        held = {normalise(x) for x in text.splitlines()}
        flat = " ".join(text.split())
        found = [s for s in lines if s in held or s in flat]
        if found:
            out[str(f.relative_to(folder))] = found
    return out


def _files(src: Path, part: str):
    top = src / part
    if top.is_file():
        yield Path(part), top
        return
    for f in sorted(top.rglob("*")):
        rel = f.relative_to(src)
        if f.is_file() and not SKIP & set(rel.parts) and f.suffix != ".pyc" and \
                not any(rel == Path(x) or rel.is_relative_to(x) for x in LEFT_OUT):
            yield rel, f


def _clear_outputs(text: str) -> str:
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _check_out(out: Path, src: Path) -> Path:
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CourseError(f"{out} exists and is not an empty folder; give a new folder for the student copy")
    if out.is_relative_to(src):
        raise CourseError(f"{out} lies inside the project the copy is made from; choose a folder outside {src}")
    return out


def strip(src: Path, out, keep_solutions: bool = False) -> dict:
    """Write the student copy of the project `src` to `out`: {"stripped": {file: blocks}, "left_out": {file: why}}.

    keep_solutions=True copies the marked blocks and the hidden tests as they are (a copy to try the grader on).
    """
    if not (src / "setup.py").is_file():
        raise CourseError(f"{src} is an installed package, not the project's source: run this from a checkout")
    out = _check_out(Path(out), src)
    stripped, left_out = {}, {}
    for part in COPIED:
        for rel, f in _files(src, part) if (src / part).exists() else ():
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix == ".py" and rel.parts[0] == "uniad_mini" and not keep_solutions:
                text, n = strip_source(f.read_text(), str(rel))
                if "graded_tests" in rel.parts:
                    text = strip_hidden(text, str(rel))
                compile(text, str(dest), "exec")  # a block that cannot become a raise is an error here
                dest.write_text(text)
                stripped.update({str(rel): n} if n else {})
            elif f.suffix == ".ipynb":
                dest.write_text(_clear_outputs(f.read_text()))
            else:
                dest.write_bytes(f.read_bytes())
    if not keep_solutions:
        lines = solution_lines(src)
        for rel, found in leaks(out, lines).items():
            if Path(rel).parts[0] == "uniad_mini":
                raise CourseError(f"{rel} repeats a solution line ({lines[found[0]]}: {found[0]!r}); mark it there too")
            (out / rel).unlink()
            left_out[rel] = f"holds a solution line ({lines[found[0]]})"
    return {"stripped": stripped, "left_out": left_out}
