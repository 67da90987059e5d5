"""docs/architecture.md is the map of the package: it names every module, and every module it names exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "architecture.md"


def named_paths() -> set[str]:
    """Every `uniad_mini/....py` and `kernels/....py` path the page names in backticks."""
    return set(re.findall(r"`((?:uniad_mini|kernels)/[\w/]+\.py)`", MAP.read_text()))


def module_paths() -> set[str]:
    found = set()
    for base in ("uniad_mini", "kernels"):
        found |= {str(p.relative_to(ROOT)) for p in (ROOT / base).rglob("*.py")
                  if "graded_tests" not in p.parts}  # the grader's tests are data, not modules of the package
    return found


def test_every_module_is_on_the_map():
    assert sorted(module_paths() - named_paths()) == []


def test_every_module_on_the_map_exists():
    assert sorted(named_paths() - module_paths()) == []


def test_each_module_has_one_line_of_its_own():
    rows = re.findall(r"^\| `((?:uniad_mini|kernels)/[\w/]+\.py)` \| (.+) \|$", MAP.read_text(), re.M)
    assert sorted(p for p, _ in rows) == sorted(module_paths())  # one table row each, none twice
    assert all(len(what.strip()) > 10 for _, what in rows)


def test_the_papers_path_is_listed_with_its_current_line_counts_under_1500():
    rows = re.findall(r"^\| \d+ \| `(uniad_mini/\w+\.py)` \| (\d+) \|", MAP.read_text(), re.M)
    assert [p for p, _ in rows][-2:] == ["uniad_mini/model.py", "uniad_mini/training.py"]
    for path, lines in rows:
        assert int(lines) == len((ROOT / path).read_text().splitlines()), f"{path}: update docs/architecture.md"
    assert sum(int(n) for _, n in rows) < 1500
