# Refinery: `make demo` runs the main job on built-in data; `make test` runs lint and tests.
# Both create .venv when it is missing and install the project into it first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.refinery-installed

# Without an NVIDIA driver torch is pinned to the tested CPU-capable build, so installing never
# pulls gigabytes of CUDA wheels (set TORCH_INDEX to PyTorch's CPU wheel index where the default
# index only has CUDA builds). With a driver the venv sees the system's packages and pip keeps
# any torch already there.
TORCH_CPU ?= torch==2.13.0
TORCH_INDEX ?=
# DALI for CUDA 13 by default (pyproject); `make install DALI_PACKAGE=nvidia-dali-cuda120` on
# CUDA 12 machines (the two wheels overwrite each other's files, so one replaces the other)
DALI_PACKAGE ?= nvidia-dali-cuda130
HAVE_NVIDIA := $(shell if [ -e /proc/driver/nvidia/version ] || command -v nvidia-smi >/dev/null 2>&1; then echo yes; fi)

DEMO := out/demo
DEMO_STEPS ?= 200  # adversarial iterations of the small preset: a couple of minutes on 2 cores

# The prepared GPU check runs where the GPU is, often a machine with its own torch and no
# package index: it uses .venv's python when there is one, the system's python3 otherwise, and
# installs what that machine lacks from the wheels `make gpu-wheels` puts in .whl/.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_ARGS ?=
GPU_SWEEP_ARGS ?=
GPU_WHEELS ?= webdataset==1.0.2 braceexpand==0.1.7 deflate==0.9.0 orjson==3.13.0

.PHONY: install test lint demo bench experiments results-table clean gpu-check gpu-sweep gpu-wheels \
	experiment-evaluate experiment-drift-floor experiment-spigan-terms experiment-real-gaze \
	experiment-real-gaze-cues

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(if $(HAVE_NVIDIA),--system-site-packages) $(VENV)
	@if [ -z "$(HAVE_NVIDIA)" ]; then \
		echo "no NVIDIA driver: installing $(TORCH_CPU) (CPU)"; \
		$(BIN)/python -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install -e '.[dev]'
	@if [ "$(DALI_PACKAGE)" != nvidia-dali-cuda130 ]; then \
		echo "DALI: $(DALI_PACKAGE) instead of nvidia-dali-cuda130"; \
		$(BIN)/python -m pip uninstall -y nvidia-dali-cuda130 && \
		$(BIN)/python -m pip install --force-reinstall --no-deps "$(DALI_PACKAGE)"; \
	fi
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/refinery synth gaze --variant synthetic --n 2000 --seed 1 --shard-size 500 --out $(DEMO)/synthetic
	$(BIN)/refinery synth gaze --variant real --n 2000 --seed 2 --shard-size 500 --out $(DEMO)/real
	$(BIN)/refinery train simgan --preset small --steps $(DEMO_STEPS) --synthetic $(DEMO)/synthetic --real $(DEMO)/real --out $(DEMO)/run
	$(BIN)/refinery export $(DEMO)/run --out $(DEMO)/engine
	$(BIN)/refinery refine --engine $(DEMO)/engine --input $(DEMO)/synthetic --output $(DEMO)/refined
	$(BIN)/refinery inspect $(DEMO)/synthetic $(DEMO)/refined $(DEMO)/real --labels 1 --sheet $(DEMO)/contact-sheet.png
	@echo "demo: refined shards in $(DEMO)/refined (stats beside each), engine in $(DEMO)/engine,"
	@echo "      run (TensorBoard: tensorboard --logdir $(DEMO)/run/tb) in $(DEMO)/run;"
	@echo "      contact sheet (synthetic | refined | real) at $(DEMO)/contact-sheet.png"

# The product benchmarks: speed and memory of each command, ~22 min on this 2-core machine
# (1,296 s end to end at 235fa64; each command's time below is from that run).
# Each writes benchmarks/results/<name>.json; the README's table is rendered from them.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.shard_io  # 28 s: shard write/read samples/s, gaze and scene
	$(BIN)/python -m benchmarks.ingest  # 27 s: refinery ingest, UnityEyes and GTA-V layouts
	$(BIN)/python -m benchmarks.engines  # 61 s: ONNX Runtime against torch eager
	$(BIN)/python -m benchmarks.refine  # 166 s: the refine job against the codec and the engine alone, its memory over size
	$(BIN)/python -m benchmarks.simgan_speed  # 75 s: the trainer's compute ceiling
	$(BIN)/python -m benchmarks.train_speed  # 252 s: the real loop, waiting for data
	$(BIN)/python -m benchmarks.evaluate_memory  # 412 s: evaluate's peak memory, 1k vs 4k frames
	$(BIN)/python -m benchmarks.domain_gap  # 275 s: what a task net loses from the built-in synthetic data to real
	$(BIN)/python -m benchmarks.table

# The experiments: ablations and studies, ~26 h on 2 cores; what they taught is written in
# docs/experiments.md. Records go to benchmarks/experiments/results/, and `refinery evaluate`'s
# HTML sample reports beside them (reports/, not tracked in git). real_gaze and the studies of
# its runs need the MPIIGaze fixture crops in ../shared (skipped without them). Run one with
# `make experiments EXPERIMENTS=real-gaze` (names: the targets below).
EXPERIMENTS ?= evaluate drift-floor spigan-terms real-gaze real-gaze-cues
RG := $(BIN)/python -m benchmarks.experiments.real_gaze --robust-epochs 48
LOCAL_D := --set discriminator=simgan-discriminator-local
D_LR_4X := --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}'
PAIR := $(LOCAL_D) $(D_LR_4X) --hold-gaze 5  # the real-eyes setting (train --preset real-eyes)

experiments: $(STAMP)
	$(MAKE) $(addprefix experiment-,$(EXPERIMENTS))
	$(BIN)/python -m benchmarks.table

experiment-evaluate:  # ~9.5 h: a GAN per seed, 4 experiments and 24 ablations, with HTML reports
	$(BIN)/python -m benchmarks.experiments.evaluate

experiment-drift-floor:  # ~10 min: what label drift reads on appearance alone (gaze, scene)
	$(BIN)/python -m benchmarks.experiments.drift_floor

experiment-spigan-terms:  # ~13 min: the gradient each term of SPIGAN's objective sends into G
	$(BIN)/python -m benchmarks.experiments.spigan_terms

experiment-real-gaze:  # ~15 h: the real-eye recipe and its ablations, 3 GANs each (30-85 min a line)
	$(BIN)/python -m benchmarks.experiments.real_gaze  # the small recipe as it is
	$(RG) --tag robust-48 --out out/bench-real-gaze-r48  # its drift read by the 48-epoch estimator
	$(RG) --set self_reg_weight=2.0 --tag selfreg-2 --out out/bench-real-gaze-sr2
	$(RG) --set self_reg_weight=7.6 --tag selfreg-7.6 --out out/bench-real-gaze-sr76
	$(RG) --synth-option equalise=1 --tag equalised --out out/bench-real-gaze-eq
	$(RG) --hold-gaze 20 --tag hold-gaze-20 --out out/bench-real-gaze-hold
	$(RG) --synth-option pitch_shift=5 --synth-option yaw_shift=-4 --synth-option yaw_scale=0.5 --hold-gaze 5 --tag matched-hold-gaze-5 --out out/bench-real-gaze-matched-hold
	$(RG) $(LOCAL_D) --tag local-d --out out/bench-real-gaze-local
	$(RG) $(LOCAL_D) --hold-gaze 5 --tag local-d-hold-gaze-5 --out out/bench-real-gaze-local-hold
	$(RG) $(PAIR) --tag local-d-hold-gaze-5-d-lr-4x --out out/bench-real-gaze-local-hold-dlr
	$(RG) $(PAIR) --seeds 3 4 5 --tag local-d-hold-gaze-5-d-lr-4x-seeds-3-5 --out out/bench-real-gaze-local-hold-dlr-s35
	$(RG) $(LOCAL_D) --set 'discriminator_optimiser={name: adam, lr: 0.0016, betas: [0.5, 0.999]}' --hold-gaze 5 --tag local-d-hold-gaze-5-d-lr-8x --out out/bench-real-gaze-local-hold-dlr8
	$(RG) $(PAIR) --steps 1200 --tag local-d-hold-gaze-5-d-lr-4x-steps-1200 --out out/bench-real-gaze-local-hold-dlr-1200
	$(RG) $(PAIR) --set refiner_ema=0.995 --tag local-d-hold-gaze-5-d-lr-4x-ema --out out/bench-real-gaze-local-hold-dlr-ema
	$(RG) $(PAIR) --holdout --select-every 150 --tag local-d-hold-gaze-5-d-lr-4x-holdout-select --out out/bench-real-gaze-local-hold-dlr-hs
	$(RG) $(PAIR) --set discriminator_augment=brightness,contrast,translation,cutout --tag local-d-hold-gaze-5-d-lr-4x-diffaugment --out out/bench-real-gaze-local-hold-dlr-da
	$(RG) $(PAIR) --synthetic 4000 --tag local-d-hold-gaze-5-d-lr-4x-synthetic-4000 --out out/bench-real-gaze-local-hold-dlr-4k
	$(RG) $(PAIR) --synth-option iris_tone=0.45 --tag local-d-hold-gaze-5-d-lr-4x-tone --out out/bench-real-gaze-local-hold-dlr-tone
	$(RG) $(PAIR) --set discriminator_r1=0.01 --tag local-d-hold-gaze-5-d-lr-4x-r1-0.01 --out out/bench-r1-0.01
	$(RG) $(PAIR) --set discriminator_r1=0.01 --seeds 3 4 5 --tag local-d-hold-gaze-5-d-lr-4x-r1-0.01-seeds-3-5 --out out/bench-r1-0.01-s35
	$(RG) --set refiner=simgan-refiner-gaze $(LOCAL_D) --hold-gaze 5 --tag paper-refiner-local-d-hold-gaze-5 --out out/bench-real-gaze-paper-refiner
	$(RG) --set discriminator=simgan-discriminator-local-wide $(D_LR_4X) --hold-gaze 5 --tag local-wide-d-hold-gaze-5-d-lr-4x --out out/bench-real-gaze-local-wide-hold-dlr

experiment-real-gaze-cues:  # ~1 h: what tells the real-gaze runs' refined eyes from real (needs experiment-real-gaze)
	$(BIN)/python -m benchmarks.experiments.realism_cues --run out/bench-real-gaze --run out/bench-real-gaze-matched-hold
	$(BIN)/python -m benchmarks.experiments.c2st_noise --run out/bench-real-gaze-local-hold-dlr
	$(BIN)/python -m benchmarks.experiments.capture_cues --run out/bench-real-gaze-local-hold-dlr

gpu-check:  # everything that needs a GPU, in one run (sized for < 8 min on one H200); --device cpu dry-runs it
	$(GPU_PYTHON) -m benchmarks.gpu $(GPU_CHECK_ARGS)
	$(GPU_PYTHON) -m benchmarks.table

gpu-sweep:  # real_gaze variants side by side, 12 at a time (~10 min on one H200 with 16 cores): a search for a CPU run
	$(GPU_PYTHON) -m benchmarks.experiments.real_gaze_sweep $(GPU_SWEEP_ARGS)
	$(GPU_PYTHON) -m benchmarks.table

gpu-wheels: $(STAMP)  # pure-Python wheels the GPU check installs where no index is reachable
	$(BIN)/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

results-table: $(STAMP)
	$(BIN)/python -m benchmarks.table

clean:
	rm -rf out .pytest_cache .ruff_cache
