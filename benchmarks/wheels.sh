# Sourced by gpu_tests.sh and gpu_check.sh (with $root set to the repository root).
#
# The GPU machine has Python 3.12, torch with CUDA, transformers 5.x (with their own
# dependencies) and pip, nothing else we can count on, and no internet. Every other runtime
# and test dependency of virnucpro and of these scripts, with its own dependencies, is
# carried as a CPython 3.12 x86-64 wheel in .whl/ (kept out of git by .gitignore): fetched
# beforehand where PyPI is reachable (`gpu_tests.sh --fetch-wheels`), installed on the
# device with --no-index into /tmp/site. Pinned as tested. benchmarks/dry_run.py proves the
# list complete: it runs both scripts with nothing importable but the standard library,
# torch and transformers with their dependencies, and the distributions named here.
wheels=(
    # reading FASTA/FASTQ (xopen's compressors: isal, zlib-ng, backports.zstd)
    dnaio==1.2.4 xopen==2.1.0 isal==1.9.1 zlib-ng==1.1.0 backports.zstd==1.8.0
    # the CLI
    click==8.5.1 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0
    rich-click==1.9.9
    # plots (virnucpro plot / evaluate)
    matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.69.1 kiwisolver==1.5.1
    pillow==13.0.0 pyparsing==3.3.3 python-dateutil==2.9.0.post0 six==1.17.0
    # the tests
    pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0 hypothesis==6.170.27 sortedcontainers==2.4.0
    # gpu_check: the original's ESM-2 (fair-esm, pure Python) and the NVML cross-check
    fair-esm==2.0.0 nvidia-ml-py==13.615.71
)
# What each script imports before it starts: one line names whatever does not import.
modules_common=(numpy torch transformers tokenizers safetensors huggingface_hub dnaio xopen
                isal zlib_ng click rich rich_click matplotlib)
modules_check=("${modules_common[@]}" esm)   # + pynvml on a GPU
modules_tests=("${modules_common[@]}" pytest hypothesis)

fetch_wheels() {  # fetch_wheels PYTHON [X.Y]: download them into $root/.whl, for CPython X.Y
    "$1" -m pip download -q --no-deps --only-binary=:all: --python-version "${2:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$root/.whl" "${wheels[@]}"
}

install_wheels() {  # install_wheels PYTHON: what .whl/ holds, into /tmp/site, on PYTHONPATH
    if compgen -G "$root/.whl/*.whl" >/dev/null; then
        "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$root"/.whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
}

check_modules() {  # check_modules PYTHON WHO MODULE...: exit 2 with one line if any is missing
    local py="$1" who="$2"
    shift 2
    "$py" - "$who" "$@" <<'PY'
import importlib
import sys

who, names = sys.argv[1], sys.argv[2:]
missing = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:  # ImportError, or a broken wheel's own error
        missing.append(f"{name} ({type(exc).__name__})")
if missing:
    sys.exit(f"{who}: {sys.executable} cannot import {', '.join(missing)}; run "
             "benchmarks/gpu_tests.sh --fetch-wheels where PyPI is reachable and bring .whl/")
PY
}

ensure_modules() {  # ensure_modules PYTHON WHO MODULE...: install .whl/ if needed, then check
    check_modules "$@" 2>/dev/null || install_wheels "$1"
    check_modules "$@"
}
