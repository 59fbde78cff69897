# Set-up, tests and demos. `make test` and `make demo` create the environment first when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch / torchvision pair must match (torchvision's compiled ops are built for one torch).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv test demo demo-analyses bench gpu-check clean

venv: $(STAMP)

# pip installs without byte-compiling (it would do so one file at a time); compileall then byte-compiles the installed
# packages on every core, so that each later process imports torch in ~3 s instead of ~8 s where
# PYTHONDONTWRITEBYTECODE keeps Python from caching bytecode itself. A few files written for newer Pythons (torch's
# py312 test helpers) fail to compile: they are never imported here, hence the `|| true`.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile $(TORCH_SPEC)
	$(PY) -m pip install --quiet --no-compile -e '.[test]'
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# The embedded demo (docs/demo.md): synthetic tasks, tiny CLIP, fine-tuning, every merge method, table + chart.
demo: $(STAMP)
	$(PY) demo.py

demo-analyses: $(STAMP)
	$(PY) demo.py --analyses

bench: $(STAMP)
	$(PY) bench/merge.py --model ViT-B-32 --tasks 8 --method TSVM

# CUDA tests (tests/gpu, marker gpu) and the merge benchmark on the GPU, with a short report; without a GPU it says
# so and succeeds.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .bench_cache
