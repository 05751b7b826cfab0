"""Both prepared GPU scripts, run here in their CPU modes with only what the GPU machine has.

    python benchmarks/dry_run.py [--json FILE]

The GPU machine has the standard library, torch and transformers with their own dependencies,
pip, and the wheels we carry (`wheels.sh`). This builds a site directory that holds exactly
those distributions of the running interpreter (symbolic links to its installed copies, so
nothing is downloaded: `make test`'s set-up installed them) and runs

  gpu_check.sh --cpu-tiny          every section, every figure of the summary
  gpu_tests.sh --no-install        the GPU tests collected, and skipped (no CUDA here)

with `python -S` (no site-packages; spawned workers inherit the flag) and that directory on
PYTHONPATH. An import of anything else fails as it would on the device: a dependency missing
from `wheels.sh` fails here first. The interpreter's own version stands in for 3.12;
`gpu_tests.sh --fetch-wheels` fetches the same list as cp312 wheels.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = ("torch", "transformers", "pip")  # what the device brings, with their dependencies


def carried() -> list[str]:
    """The distribution names of `wheels.sh`'s list (versions dropped)."""
    text = (REPO / "benchmarks" / "wheels.sh").read_text()
    body = re.search(r"^wheels=\((.*?)^\)", text, re.S | re.M)
    if body is None:
        raise ValueError("benchmarks/wheels.sh: no wheels=( ... ) list")
    lines = [line.split("#", 1)[0] for line in body.group(1).splitlines()]
    return [w.split("==", 1)[0] for w in " ".join(lines).split()]


def closure(names: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions `names` need, with everything they require (extras left
    out, markers evaluated for this interpreter); names not installed are skipped."""
    from packaging.requirements import Requirement

    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = _canonical(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def allowed(exclude: tuple[str, ...] = ()) -> dict[str, metadata.Distribution]:
    """What the device has: `BASE` with its dependencies, and the carried distributions as
    listed (not their dependencies: a dependency the list lacks must fail here); less
    `exclude`."""
    dists = closure(list(BASE))
    for name in carried():
        try:
            dists[_canonical(name)] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
    return {k: v for k, v in dists.items() if k not in map(_canonical, exclude)}


def missing_carried() -> list[str]:
    """Carried distributions that this interpreter does not have (their modules cannot be
    tried here)."""
    have = allowed()
    return [n for n in carried() if _canonical(n) not in have]


def build_site(target: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """Links in `target` to every top-level module, package and .dist-info of the allowed
    distributions (less `exclude`); returns their names."""
    dists = allowed(exclude)
    target.mkdir(parents=True, exist_ok=True)
    for dist in dists.values():
        root = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or ()}
        for top in sorted(tops):
            src = root / top
            if top in ("..", "__pycache__") or top.endswith(".pth") or not src.exists():
                continue
            link = target / top
            if not link.exists():  # a namespace directory shared by two: linked once
                link.symlink_to(src)
    return sorted(dists)


def guarded_env(site: Path, bin_dir: Path) -> dict[str, str]:
    """The environment of a guarded run: `$PYTHON` is this interpreter with -S."""
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHON=str(wrapper), PYTHONPATH=str(site), PYTHONNOUSERSITE="1")
    return env


def run_guarded(argv: list[str], work: Path, timeout: float,
                exclude: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`argv` (a command run in the repository root; `$PYTHON` is the guarded interpreter)
    under the guard, less the distributions in `exclude`."""
    site, bin_dir = work / "site", work / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if not site.exists():
        build_site(site, exclude)
    return subprocess.run(argv, cwd=REPO, env=guarded_env(site, bin_dir),
                          capture_output=True, text=True, timeout=timeout)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=None, help="gpu_check's figures, here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dry_run_") as tmp:
        work = Path(tmp)
        print(f"allowed: {', '.join(build_site(work / 'site'))}")
        if missing_carried():
            print(f"not installed here (not tried): {', '.join(missing_carried())}")
        out = args.json or work / "gpu_check.json"
        rc = 0
        for cmd in (["bash", "benchmarks/gpu_check.sh", "--cpu-tiny", "--json", str(out)],
                    ["bash", "benchmarks/gpu_tests.sh", "--no-install"]):
            proc = run_guarded(cmd, work, timeout=600)
            print(f"== {' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
            rc = rc or proc.returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
