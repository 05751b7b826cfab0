#!/usr/bin/env bash
# The GPU tests (tests/gpu, marker `gpu`) on one CUDA GPU with tiny random models: < 4 minutes,
# nothing downloaded. Prints each test's outcome, the default-precision figures of test (f)
# and the compile figures of tests (h) and (h2: no recompile over a whole input).
#
#   benchmarks/gpu_tests.sh [--log FILE]          # on a CUDA machine, from any directory
#   benchmarks/gpu_tests.sh --no-install          # use the interpreter's packages as they are
#                                                 # (on a CPU: the tests are collected, skipped)
#   benchmarks/gpu_tests.sh --fetch-wheels [X.Y]  # on a machine with PyPI, beforehand
#                                                 # (wheels for CPython X.Y; default 3.12)
#
# A GPU machine that has PyTorch and transformers but nothing else of ours gets the rest
# (the CLI's, the readers', pytest...) as CPython 3.12 x86-64 wheels in .whl/ at the
# repository root: --fetch-wheels downloads them there (the list is in wheels.sh; .whl/ is
# in .gitignore: carry it), and a plain run installs them into /tmp/site when something does
# not import; one line names what still does not. src/ is put on PYTHONPATH, so virnucpro
# need not be installed. The interpreter is $PYTHON if set, else python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-$(command -v python3 || command -v python)}"
source "$root/benchmarks/wheels.sh"
limit=210  # seconds: the hard stop for pytest, inside the 4 minutes (compiling included)

install=1
log=""
while (($#)); do
    case "$1" in
        --no-install) install=0 ;;
        --log) log="$2"; shift ;;
        --fetch-wheels) fetch_wheels "$py" "${2:-}"; exit ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "gpu_tests.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if ((install)); then
    ensure_modules "$py" gpu_tests.sh "${modules_tests[@]}" || exit 2
else
    check_modules "$py" gpu_tests.sh "${modules_tests[@]}" || exit 2
fi
"$py" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda,
'| GPU:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (tests skip)')"

log="${log:-$(mktemp)}"
t0=$SECONDS
set +e
timeout -k 10 "$limit" "$py" -m pytest -m gpu tests/gpu -q -rA -p no:cacheprovider \
    --durations=0 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

echo
echo "== summary ($((SECONDS - t0)) s, pytest exit $rc) =="
if ((rc == 124 || rc == 137)); then
    echo "STOPPED at the ${limit} s limit: the tests below are those that finished"
fi
grep -E '^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) ' "$log" || true
tail -n 1 "$log"
grep -E '^\((f|h|h2)\) ' "$log" || echo "(f), (h), (h2) not measured: the tests did not run on a GPU"
exit "$rc"
