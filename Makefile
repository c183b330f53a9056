# The two commands of the README: `make demo` and `make test`. Both create .venv and install from setup.cfg.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= test,beam
DEMO   ?= runs/demo
SEED   ?= 0
PRESET ?= demo
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0

.PHONY: install lint test test-fast demo shift bench clean

$(VENV)/.installed-$(EXTRAS): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

# Style (pyproject.toml [tool.ruff], CONTRIBUTING.md); `make test` runs it first.
lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q tests

test-fast: lint
	$(PY) -m pytest -q -m "not slow" tests

# Every step resumes: a complete cohort is reused, conversion continues from its cache, the study
# from its finished trainings and evaluations. Interrupted, run `make demo` again.
demo: install
	$(PY) -m data_prep.make_synthetic_cohort --out $(DEMO)/cohort --preset $(PRESET) --seed $(SEED)
	@# The synthetic cohort has no real patients, so its id-hashing salt is a fixed public string:
	@# the same seed then gives the same shards, and the same table, on every machine. Real data
	@# keeps the default (a random secret salt in <out>/.salt) or --salt_file.
	printf 'mammo_tf synthetic demo cohort: public salt\n' > $(DEMO)/cohort/demo.salt
	$(PY) -m data_prep.convert --manifest $(DEMO)/cohort/manifest.csv --out $(DEMO)/tfrecords --preset $(PRESET) --seed $(SEED) --workers 2 --salt_file $(DEMO)/cohort/demo.salt || [ $$? -eq 1 ]
	$(PY) -m eval.table2 --data $(DEMO)/tfrecords --workdir $(DEMO)/study --preset $(PRESET) --seed $(SEED)

# The controlled domain-shift experiment (README); joins the demo's report when that is finished.
shift: install
	$(PY) -m eval.shift_study --workdir $(DEMO)/shift --preset $(PRESET) --seed $(SEED) $$([ -f $(DEMO)/study/results.json ] && echo --study $(DEMO)/study)

bench: install
	$(PY) bench/bench_convert.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_train.py

clean:
	rm -rf $(DEMO) .pytest_cache
