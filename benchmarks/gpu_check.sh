#!/usr/bin/env bash
# One prepared GPU check of virnucpro: < 6 minutes on one CUDA GPU, nothing downloaded.
#
#   benchmarks/gpu_check.sh [--json FILE]     # on a CUDA machine
#   benchmarks/gpu_check.sh --cpu-tiny        # same code, tiny models, CPU, seconds (tests)
#
# Works from any directory, with virnucpro installed (pip install -e .) or not (src/ is put
# on PYTHONPATH). The interpreter is $PYTHON if set, else python3 (or python) from PATH.
# If it cannot import everything it needs (wheels.sh lists it), the wheels carried in .whl/
# are installed first (benchmarks/gpu_tests.sh --fetch-wheels gets them); whatever still does
# not import is named in one line, and nothing runs.
# See benchmarks/gpu_check.py for the sections and what each figure means.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-$(command -v python3 || command -v python)}"
source "$root/benchmarks/wheels.sh"
needed=("${modules_check[@]}")
[[ " $* " == *" --cpu-tiny "* ]] || needed+=(pynvml)  # NVML: the GPU's own busy share
ensure_modules "$py" gpu_check.sh "${needed[@]}" || exit 2
# gpu_check.py keeps to its own deadline (310 s); this is the hard stop behind it. The CPU
# smoke run compiles on the CPU from a cold cache, on test machines that may be busy.
hard_stop=325
[[ " $* " == *" --cpu-tiny "* ]] && hard_stop=600
exec timeout -k 10 "$hard_stop" "$py" benchmarks/gpu_check.py "$@"
