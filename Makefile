# `make demo` sets up .venv with what the tool needs and runs it on the bundled example;
# `make test` adds the test, Ray, MultiQC and Snakemake extras, then runs lint and the tests.
# Both create .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python

# Which torch build the first install puts in .venv. On Linux x86_64, PyPI's torch is the CUDA
# build: it pulls triton and about 15 nvidia-* packages (several GB). PyTorch's CPU index holds
# the CPU-only build (`2.13.0+cpu`, about 200 MB); pip looks there too and, since `+cpu` sorts
# above the plain version, takes it. So by default you get the CPU build, which is all that
# the demo and the tests use. To choose:
#   make demo                                  CPU build (TORCH_INDEX below)
#   make demo TORCH_INDEX=                     PyPI's build: CUDA on Linux x86_64, CPU on macOS
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cuXYZ    one CUDA version (pytorch.org
#                                              lists those of each release)
# Only torch itself comes from that index (--no-deps; its dependencies come from PyPI with
# the tool's). Where the index cannot be reached, pip retries it for about 10 s, warns, and
# takes torch from the indexes it is configured with (plain PyPI: the CUDA build).
# `.venv/bin/python -c "import torch; print(torch.__version__)"` says which build you have:
# `+cpu` is the CPU build.
TORCH       ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

# The demo needs only the tool's own dependencies; pip shows its progress on this first install.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install --no-deps "$(TORCH)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -e .
	touch $@

# The tests also run Ray, MultiQC and Snakemake, fair-esm (a reference) and pytest-xdist.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -e '.[test,ray,report,workflow]'
	touch $@

.PHONY: demo test lint
demo: $(VENV)/.installed
	$(VENV)/bin/virnucpro selftest --keep demo_out
	@echo
	@echo "The pipeline works. Outputs of the tiny-model run are in demo_out/predict/."
	@echo "Next, with the real models (about 12 GB, once):"
	@echo "  $(VENV)/bin/virnucpro models download --model-type 500"
	@echo "  $(VENV)/bin/virnucpro predict reads.fastq.gz -o results/"

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

# Two test processes (pytest-xdist), each test module in one of them, so a module's shared
# fixtures are built once; modules are handed out slowest first (tests/conftest.py orders
# them). pytest exits 5 when it collects no test: not a failure of the build.
test: lint
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
