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
HAVE_NVIDIA := $(shell if [ -e /proc/driver/nvidia/version ] || command -v nvidia-smi >/dev/null 2>&1; then echo yes; fi)

DEMO := out/demo
DEMO_STEPS ?= 200  # adversarial iterations of the small preset: a couple of minutes on 2 cores

# The prepared GPU check runs where the GPU is, often a machine with its own torch and no
# package index: it uses .venv's python when there is one, the system's python3 otherwise, and
# installs what that machine lacks from the wheels `make gpu-wheels` puts in .whl/.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_ARGS ?=
GPU_SWEEP_ARGS ?=
GPU_WHEELS ?= webdataset==1.0.2 braceexpand==0.1.7 deflate==0.9.0

.PHONY: install test lint demo bench results-table clean gpu-check gpu-sweep gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(if $(HAVE_NVIDIA),--system-site-packages) $(VENV)
	@if [ -z "$(HAVE_NVIDIA)" ]; then \
		echo "no NVIDIA driver: installing $(TORCH_CPU) (CPU)"; \
		$(BIN)/python -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install -e '.[dev]'
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

bench: $(STAMP)
	$(BIN)/python -m benchmarks.shard_io
	$(BIN)/python -m benchmarks.domain_gap
	$(BIN)/python -m benchmarks.engines
	$(BIN)/python -m benchmarks.ingest
	$(BIN)/python -m benchmarks.refine
	$(BIN)/python -m benchmarks.simgan_speed  # < 2 min: the trainer's compute ceiling
	$(BIN)/python -m benchmarks.train_speed  # ~2 min: the real loop, waiting for data
	$(BIN)/python -m benchmarks.evaluate_memory  # ~6 min: evaluate's peak memory, 1k vs 4k frames
	$(BIN)/python -m benchmarks.spigan_terms  # ~13 min: the gradient each term of SPIGAN's objective sends into G
	$(BIN)/python -m benchmarks.drift_floor  # ~20 min: what label drift reads on appearance alone (gaze, scene)
	$(BIN)/python -m benchmarks.evaluate  # ~9.5 h on 2 cores: a GAN per seed, 4 experiments, 24 ablations (the SPIGAN arms at 750 frames and with selfreg: 6 seeds)
	$(BIN)/python -m benchmarks.real_gaze  # ~20 min: ingest, 3 GANs, refine on real MPIIGaze crops (skipped without ../shared)
	$(BIN)/python -m benchmarks.real_gaze --padding zeros --out out/bench-real-gaze-zeros  # ~15 min: the ablation
	$(BIN)/python -m benchmarks.real_gaze --set psi=gradients --set self_reg_weight=1.0 --tag psi-gradients --out out/bench-real-gaze-psi  # ~15 min: the psi ablation
	$(BIN)/python -m benchmarks.real_gaze --set refiner_noise=1 --tag noise --out out/bench-real-gaze-noise  # ~15 min: the noise ablation
	$(BIN)/python -m benchmarks.real_gaze --steps 1200 --tag steps-1200 --out out/bench-real-gaze-1200  # ~30 min: twice the steps
	$(BIN)/python -m benchmarks.real_gaze --set refiner_ema=0.995 --tag ema --out out/bench-real-gaze-ema  # ~15 min: the weight-average ablation
	$(BIN)/python -m benchmarks.real_gaze --robust-epochs 48 --tag robust-48 --out out/bench-real-gaze-r48  # ~25 min: real_gaze's GANs, drift read by an estimator trained 48 epochs
	$(BIN)/python -m benchmarks.real_gaze --set self_reg_weight=2.0 --robust-epochs 48 --tag selfreg-2 --out out/bench-real-gaze-sr2  # ~25 min: lambda 4x the small recipe's
	$(BIN)/python -m benchmarks.real_gaze --set self_reg_weight=7.6 --robust-epochs 48 --tag selfreg-7.6 --out out/bench-real-gaze-sr76  # ~25 min: the paper's lambda for a 9x14 patch map
	$(BIN)/python -m benchmarks.real_gaze --synth-option iris_scale=1.15 --synth-option opening=0.85 --robust-epochs 48 --tag anatomy --out out/bench-real-gaze-anatomy  # ~25 min: larger irises in narrower openings
	$(BIN)/python -m benchmarks.real_gaze --synth-option iris_tone=0.45 --synth-option iris_scale=1.15 --synth-option opening=0.85 --robust-epochs 48 --tag tone-anatomy --out out/bench-real-gaze-tone-anatomy  # ~45 min: and near-black irises
	$(BIN)/python -m benchmarks.real_gaze --hold-gaze 20 --robust-epochs 48 --tag hold-gaze-20 --out out/bench-real-gaze-hold  # ~75 min: the geometry term, a frozen gaze network every refiner answers to
	$(BIN)/python -m benchmarks.real_gaze --synth-option pitch_shift=5 --synth-option yaw_shift=-4 --synth-option yaw_scale=0.5 --hold-gaze 5 --robust-epochs 48 --tag matched-hold-gaze-5 --out out/bench-real-gaze-matched-hold  # ~35 min: the real crops' iris placement and a lighter geometry term
	$(BIN)/python -m benchmarks.real_gaze --synth-option equalise=1 --synth-option pitch_shift=5 --synth-option yaw_shift=-4 --synth-option yaw_scale=0.5 --hold-gaze 5 --robust-epochs 48 --tag equalised-matched-hold-gaze-5 --out out/bench-real-gaze-eq-matched-hold  # ~25 min: and synthetic eyes histogram-equalised as MPIIGaze's crops are
	$(BIN)/python -m benchmarks.real_gaze --synth-option equalise=1 --robust-epochs 48 --tag equalised --out out/bench-real-gaze-eq  # ~25 min: the recipe with synthetic eyes histogram-equalised
	$(BIN)/python -m benchmarks.real_gaze --set discriminator=simgan-discriminator-local --robust-epochs 48 --tag local-d --out out/bench-real-gaze-local  # ~30 min: the recipe with a discriminator on 11x11 windows instead of 23x23
	$(BIN)/python -m benchmarks.real_gaze --set discriminator=simgan-discriminator-local --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5 --out out/bench-real-gaze-local-hold  # ~35 min: and the geometry term
	$(BIN)/python -m benchmarks.real_gaze --set discriminator=simgan-discriminator-local --set self_reg_weight=0.1 --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-selfreg-0.1 --out out/bench-real-gaze-local-hold-sr01  # ~30 min: and lambda 0.1, the geometry term holding the gaze instead
	$(BIN)/python -m benchmarks.real_gaze --set refiner=simgan-refiner-gaze --set discriminator=simgan-discriminator-local --hold-gaze 5 --robust-epochs 48 --tag paper-refiner-local-d-hold-gaze-5 --out out/bench-real-gaze-paper-refiner  # ~60 min: the local D and geometry term with the paper's larger refiner (64 maps, 4 blocks)
	$(BIN)/python -m benchmarks.real_gaze --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x --out out/bench-real-gaze-local-hold-dlr  # ~35 min: the local D and geometry term with the discriminator learning 4x as fast as the refiner
	$(BIN)/python -m benchmarks.real_gaze --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0016, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-8x --out out/bench-real-gaze-local-hold-dlr8  # ~35 min: the local D and geometry term with the discriminator learning 8x as fast as the refiner
	$(BIN)/python -m benchmarks.real_gaze --steps 1200 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-steps-1200 --out out/bench-real-gaze-local-hold-dlr-1200  # ~50 min: the 4x pace trained twice as long
	$(BIN)/python -m benchmarks.real_gaze --set k_d=2 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-k-d-2 --out out/bench-real-gaze-local-hold-dlr-kd2  # ~40 min: the 4x pace with two discriminator updates per refiner round
	$(BIN)/python -m benchmarks.real_gaze --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 2.5 --robust-epochs 48 --tag local-d-hold-gaze-2.5-d-lr-4x --out out/bench-real-gaze-local-hold25-dlr  # ~38 min: the 4x pace with half the geometry term
	$(BIN)/python -m benchmarks.real_gaze --synth-option iris_tone=0.45 --synth-option iris_scale=1.15 --synth-option opening=0.85 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-tone-anatomy --out out/bench-real-gaze-local-hold-dlr-ta  # ~38 min: the 4x pace on larger, near-black irises in narrower openings
	$(BIN)/python -m benchmarks.real_gaze --seeds 3 4 5 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-seeds-3-5 --out out/bench-real-gaze-local-hold-dlr-s35  # ~35 min: the 4x pair's GANs 3, 4 and 5, six GANs with real_gaze_local-d-hold-gaze-5-d-lr-4x
	$(BIN)/python -m benchmarks.real_gaze --set refiner_ema=0.995 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-ema --out out/bench-real-gaze-local-hold-dlr-ema  # ~38 min: the 4x pair exporting a moving average of the refiner's weights
	$(BIN)/python -m benchmarks.real_gaze --seeds 3 4 5 --set refiner_ema=0.995 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-ema-seeds-3-5 --out out/bench-real-gaze-local-hold-dlr-ema-s35  # ~38 min: its GANs 3, 4 and 5, six GANs with real_gaze_local-d-hold-gaze-5-d-lr-4x-ema
	$(BIN)/python -m benchmarks.real_gaze --synth-option lower_lash=0.6 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-lower-lash --out out/bench-real-gaze-local-hold-dlr-ll  # ~40 min: the 4x pair on eyes with lower lashes
	$(BIN)/python -m benchmarks.real_gaze --synth-option iris_tone=0.45 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-tone --out out/bench-real-gaze-local-hold-dlr-tone  # ~40 min: the 4x pair on near-black irises, nothing else changed
	$(BIN)/python -m benchmarks.real_gaze --holdout --select-every 150 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-holdout-select --out out/bench-real-gaze-local-hold-dlr-hs  # ~55 min: the 4x pair trained on half the real crops, scored on the other half, the checkpoint chosen on fresh eyes
	$(BIN)/python -m benchmarks.real_gaze --holdout --select-every 225 --steps 1200 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-holdout-select-1200 --out out/bench-real-gaze-local-hold-dlr-hs1200  # ~85 min: the same, trained 1,200 steps with six checkpoints to choose from
	$(BIN)/python -m benchmarks.real_gaze --synthetic 4000 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-synthetic-4000 --out out/bench-real-gaze-local-hold-dlr-4k  # ~70 min: the 4x pair with twice the procedural eyes
	$(BIN)/python -m benchmarks.real_gaze --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --set discriminator_augment=brightness,contrast,translation,cutout --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-diffaugment --out out/bench-real-gaze-local-hold-dlr-da  # ~45 min: the 4x pair with DiffAugment on what the discriminator sees
	$(BIN)/python -m benchmarks.real_gaze --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --set discriminator_augment=translation,cutout --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-diffaugment-translation-cutout --out out/bench-real-gaze-local-hold-dlr-da-tc  # ~45 min: and with its geometric transforms alone
	$(BIN)/python -m benchmarks.real_gaze --set discriminator=simgan-discriminator-local-wide --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-wide-d-hold-gaze-5-d-lr-4x --out out/bench-real-gaze-local-wide-hold-dlr  # ~45 min: the 4x pair with twice the discriminator's maps, the GPU search's lead (make gpu-sweep)
	$(BIN)/python -m benchmarks.real_gaze --set discriminator_r1=0.01 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-r1-0.01 --out out/bench-r1-0.01  # ~50 min: the 4x pair with an R1 penalty (gamma 0.01) on the discriminator
	$(BIN)/python -m benchmarks.real_gaze --seeds 3 4 5 --set discriminator_r1=0.01 --set discriminator=simgan-discriminator-local --set 'discriminator_optimiser={name: adam, lr: 0.0008, betas: [0.5, 0.999]}' --hold-gaze 5 --robust-epochs 48 --tag local-d-hold-gaze-5-d-lr-4x-r1-0.01-seeds-3-5 --out out/bench-r1-0.01-s35  # ~45 min: its GANs 3, 4 and 5, six GANs with real_gaze_local-d-hold-gaze-5-d-lr-4x-r1-0.01
	$(BIN)/python -m benchmarks.realism_cues --run out/bench-real-gaze --run out/bench-real-gaze-matched-hold --run out/bench-real-gaze-noise  # ~16 min: which image content (coarse or fine) tells these runs' refined eyes from real
	$(BIN)/python -m benchmarks.c2st_noise --run out/bench-real-gaze-local-hold-dlr  # ~30 min: how much of the 4x pair's spread over GANs is the two-sample classifier's own, with the records' constant rate and a cosine decay
	$(BIN)/python -m benchmarks.capture_cues --run out/bench-real-gaze-local-hold-dlr  # ~15 min: whether a capture statistic (JPEG as MPIIGaze publishes, blur, sharpening, noise, skin grain) added to the 4x pair's refined eyes brings them closer to real
	$(BIN)/python -m benchmarks.table

gpu-check:  # everything that needs a GPU, in one run (sized for < 8 min on one H200); --device cpu dry-runs it
	$(GPU_PYTHON) -m benchmarks.gpu $(GPU_CHECK_ARGS)
	$(GPU_PYTHON) -m benchmarks.table

gpu-sweep:  # real_gaze variants side by side, 12 at a time (~10 min on one H200 with 16 cores): a search for a CPU run
	$(GPU_PYTHON) -m benchmarks.real_gaze_sweep $(GPU_SWEEP_ARGS)
	$(GPU_PYTHON) -m benchmarks.table

gpu-wheels: $(STAMP)  # pure-Python wheels the GPU check installs where no index is reachable
	$(BIN)/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

results-table: $(STAMP)
	$(BIN)/python -m benchmarks.table

clean:
	rm -rf out .pytest_cache .ruff_cache
