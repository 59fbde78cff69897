# Set-up, tests and demos. `make test` and `make demo` create the environment first when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch / torchvision pair must match (torchvision's compiled ops are built for one torch).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

DEMO_DIR := .bench_cache/ViT-S-32
demo: $(STAMP)
	$(PY) bench/merge.py --model ViT-S-32 --tasks 4 --method zeroshot average sum ties consensus TSVM TSVM_2 TSVC
	$(VENV)/bin/tsvmerge merge --method TSVM --report-sti --quiet --pretrained $(DEMO_DIR)/zeroshot.pt \
		--finetuned $(foreach i,0 1 2 3,$(DEMO_DIR)/task$(i).pt) --out $(DEMO_DIR)/merged_TSVM.safetensors

bench: $(STAMP)
	$(PY) bench/merge.py --model ViT-B-32 --tasks 8 --method TSVM

clean:
	rm -rf $(VENV) .pytest_cache .bench_cache
