"""README.md against the tree: the Development list names every module of src/virnucpro and
nothing that is gone, every .py path it names exists, the layout tool it points at is in the
repository and passes, and the quick-start recipe's commands and directories behave."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "src" / "virnucpro"


def development_list(text: str) -> str:
    """The code block of README.md's `## Development` section."""
    section = text.split("\n## Development\n", 1)[1]
    return section.split("```\n", 2)[1]


def listed_modules(block: str) -> list[str]:
    """Module paths (relative to src/virnucpro) that the Development list names: every
    `name.py` on a line; a line that begins (two spaces in) with `dir/` opens that
    sub-package, and the lines indented deeper under it stay in it."""
    names, package = [], ""
    for line in block.splitlines()[1:]:  # the first line is `src/virnucpro/`
        indent = len(line) - len(line.lstrip())
        opened = re.match(r"\s{2}(\w+)/(\s|$)", line)
        if opened:
            package = opened.group(1) + "/"
        elif indent <= 2:
            package = ""
        names += [package + name for name in re.findall(r"\b(\w+\.py)\b", line)]
    return names


def tree_modules() -> list[str]:
    """Every module under src/virnucpro, package markers (`__init__.py`, `__main__.py`) aside."""
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                  if not p.name.startswith("__"))


def test_listed_modules_parser():
    block = ("src/virnucpro/\n  a.py b.py   what\n  sub/   c.py (x.py)\n         d.py\n"
             "  e.py   f\n")
    assert listed_modules(block) == ["a.py", "b.py", "sub/c.py", "sub/x.py", "sub/d.py", "e.py"]


def test_development_list_matches_the_tree():
    listed = listed_modules(development_list(README.read_text(encoding="utf-8")))
    missing = [m for m in tree_modules() if m not in listed]
    gone = [m for m in listed if not (PACKAGE / m).is_file()]
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert not missing, (
        "README.md's Development list does not name "
        + ", ".join(f"src/virnucpro/{m}" for m in missing)
        + ": add each with a few words on its job (under `models/` or `runtime/` for theirs)")
    assert not gone, ("README.md's Development list names "
                      + ", ".join(f"src/virnucpro/{m}" for m in gone)
                      + ", which does not exist: remove or rename it")
    assert not twice, f"README.md's Development list names {', '.join(twice)} twice"


def test_every_python_path_in_the_readme_exists():
    """`src/...`, `tests/...`, `benchmarks/...` and package-relative paths such as
    `models/esm.py` or `regions.py`, wherever the README names them in backquotes."""
    text = README.read_text(encoding="utf-8")
    paths = set(re.findall(r"`(?:python3? )?([\w/.-]+\.py)\b", text))
    assert "src/virnucpro/models/dnabert.py" in paths
    gone = sorted(p for p in paths if not (ROOT / p).is_file() and not (PACKAGE / p).is_file())
    assert not gone, f"README.md names {', '.join(gone)}, which does not exist"


def test_the_layout_tool_is_in_the_repository_and_passes():
    text = README.read_text(encoding="utf-8")
    assert "../shared" not in text  # nothing the README points at lies outside the clone
    assert "`python3 tools/structure.py src/virnucpro`" in text
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "structure.py"),
                           str(PACKAGE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _recipe() -> str:
    """The quick-start recipe: the README's first bash block that runs `selftest --keep`."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return next(b for b in blocks if "selftest --keep" in b)


def test_recipe_aligns_rows_with_empty_cells(tmp_path):
    """`column -t` alone splits on runs of blanks, so a no_call row (empty virus_score)
    shifts left; the recipe splits on tabs only."""
    recipe = _recipe()
    assert "column -t -s$'\\t' my_out/sequences.tsv" in recipe
    table = "seq_id\tlength\tvirus_score\tprediction\na\t10\t\tno_call\nbb\t20\t0.5\tvirus\n"
    done = subprocess.run(["bash", "-c", "column -t -s$'\\t'"], input=table,
                          capture_output=True, text=True)
    if done.returncode != 0:  # no util-linux column here: the recipe's text was checked
        return
    lines = done.stdout.splitlines()
    assert lines[1].index("no_call") == lines[2].index("virus") == lines[0].index("prediction")


def test_recipe_directories_are_ignored_by_git():
    recipe = _recipe()
    ignored = (ROOT / ".gitignore").read_text().split()
    for directory in re.findall(r"(?:--keep |-o )(\w+)/?", recipe):
        assert f"{directory}/" in ignored, f"the README recipe writes {directory}/"
    assert {"tiny/", "my_out/"} <= set(ignored)
