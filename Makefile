# `make demo` sets everything up and runs the tool on the bundled example;
# `make test` runs lint and the test suite. Both create .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel; on a GPU machine set TORCH to the build that suits it.
TORCH  ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test,ray,report,workflow]'
	touch $@

.PHONY: demo test lint
demo: $(VENV)/.installed
	$(VENV)/bin/virnucpro selftest --keep demo_out
	@echo
	@echo "The pipeline works. Outputs of the tiny-model run are in demo_out/predict/."
	@echo "Next, with the real models (about 12 GB, once):"
	@echo "  $(VENV)/bin/virnucpro models download --model-type 500"
	@echo "  $(VENV)/bin/virnucpro predict reads.fastq.gz -o results/"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collects no test: that is not a failure of the build.
test: lint
	$(PY) -m pytest -q; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
