# The two commands of the README: `make test` and `make demo`. Both build .venv when missing.
#
# torch goes in first: on CPU-only machines `torch==2.13.0` is a local CPU wheel, and letting
# pip resolve torch through another package would pull a multi-GB CUDA build. On a GPU machine:
#   make test TORCH=torch            (or a pinned CUDA build, plus PIP_ARGS for its index)

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PIP_ARGS ?=
DEMO ?= runs/demo
TOY ?= runs/toy
TOY_ASSETS := viewdiff/assets/toy

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Tiny models gain nothing from more threads, and on a busy 2-core machine torch's default of one
# thread per core (times the test's worker processes) oversubscribes it: 100x slower steps seen.
export OMP_NUM_THREADS ?= 1

.PHONY: test demo toy toy-sided lint typecheck format clean-demo clean-toy

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(PIP_ARGS)
	$(BIN)/python -m pip install -q -e ".[dev,viewer]" $(PIP_ARGS)
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The annotations of viewdiff/ checked (mypy; settings in pyproject.toml).
typecheck: $(STAMP)
	$(BIN)/mypy

# The suite's tests are single-threaded and independent (their own temp folders, free ports), so
# they run on TEST_WORKERS processes (pytest-xdist): on the 2-core CI machine 5.2 instead of 8.5
# minutes. Each test file runs on one worker (--dist loadfile: the Slurm module's tests share its
# cluster; `loadgroup` no longer groups under pytest 9.2 with pytest-xdist 3.8, whose group suffix
# pytest ignores), and a lock lets one local Slurm cluster run at a time. Each worker builds its
# own session fixtures. TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2

test: lint typecheck
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The main job on the embedded default, offline, on a CPU: the shipped toy prior generates
# (viewdiff/assets/toy) and distils a 3D scene (150 SDS steps), then a short fine-tune of the
# shipped toy base shows training.
demo: $(STAMP)
	mkdir -p $(DEMO)
	HF_HUB_OFFLINE=1 $(BIN)/python infer.py sample --checkpoint $(TOY_ASSETS)/multiview \
		--prompts configs/toy_prompts.txt --views 8 --out $(DEMO)/toy-samples
	HF_HUB_OFFLINE=1 $(BIN)/python infer.py sample --checkpoint $(TOY_ASSETS)/multiview \
		--prompt "a blue box" --views 36 --window 8 --max-conditions 8 --out $(DEMO)/toy-turntable
	HF_HUB_OFFLINE=1 $(BIN)/python infer.py sds --config configs/sds_tiny.yaml \
		--checkpoint $(TOY_ASSETS)/multiview --prompt "a red ball" --steps 150 --out $(DEMO)/toy-sds
	$(BIN)/python train.py --config configs/toy_cpu.yaml --print-config > $(DEMO)/config.yaml
	$(BIN)/python data/make_synthetic.py --out $(DEMO)/co3d --style toy --sequences 2 --frames 12 \
		--size 96x96 --overwrite
	$(BIN)/python data/prepare_co3d.py --co3d-root $(DEMO)/co3d --out $(DEMO)/shards --size 64 \
		--samples-per-shard 4 --crop object
	$(BIN)/python data/preview_batch.py --shards $(DEMO)/shards --out $(DEMO)/batch.png --n-views 4
	rm -rf $(DEMO)/train
	HF_HUB_OFFLINE=1 $(BIN)/python train.py --config configs/toy_cpu.yaml \
		model.pretrained_model=$(TOY_ASSETS)/sd data.shards=$(DEMO)/shards data.num_workers=0 \
		train.output_dir=$(DEMO)/train train.max_steps=30 train.checkpoint_every=10 \
		train.log_every=5 train.validate_every=15 train.validation_prompts="[a red ball]"
	$(BIN)/python infer.py cameras --out $(DEMO)/cameras --views 8 --image-size 128 \
		--elevation 25 --radius 4.4 --fov 34
	HF_HUB_OFFLINE=1 $(BIN)/python infer.py sample --checkpoint $(DEMO)/train/model \
		--prompt "a red ball" --views 8 --out $(DEMO)/sample
	@echo "demo: the shipped toy prior's samples $(DEMO)/toy-samples/*/grid.png and a 36-view" \
		"turntable $(DEMO)/toy-turntable/turntable.mp4 (.gif), a 3D scene distilled by SDS" \
		"$(DEMO)/toy-sds/ (scene.ply, turntable.gif); then config $(DEMO)/config.yaml," \
		"toy objects in the CO3D layout $(DEMO)/co3d, shards $(DEMO)/shards, a batch" \
		"$(DEMO)/batch.png, 30 fine-tuning steps of the toy base $(DEMO)/train (export" \
		"$(DEMO)/train/model, grids $(DEMO)/train/validation, tensorboard --logdir" \
		"$(DEMO)/train/logs), cameras $(DEMO)/cameras/ and a sample of that run $(DEMO)/sample/"

# The toy world from nothing (~70 minutes on 2 cores, run alone): toy objects -> shards ->
# pretrained toy SD -> train.py's multi-view prior -> shipped into viewdiff/assets/toy (fp16)
# -> the README's picture (docs/toy-prior.png).
# Resumes what an interrupted run left in $(TOY); `make clean-toy` starts over.
toy: $(STAMP)
	$(BIN)/python data/make_synthetic.py --out $(TOY)/co3d/train --style toy --sequences 300 \
		--frames 12 --size 96x96 --points 500 --seed 0 --overwrite
	$(BIN)/python data/make_synthetic.py --out $(TOY)/co3d/heldout --style toy --sequences 20 \
		--frames 12 --size 96x96 --points 500 --seed 1 --overwrite
	$(BIN)/python data/prepare_co3d.py --co3d-root $(TOY)/co3d/train --out $(TOY)/shards/train \
		--size 64 --workers 2 --crop object
	$(BIN)/python data/prepare_co3d.py --co3d-root $(TOY)/co3d/heldout \
		--out $(TOY)/shards/heldout --size 64 --split test --crop object
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/python -m viewdiff.toy pretrain --threads 2 \
		--shards $(TOY)/shards/train --heldout $(TOY)/shards/heldout --out $(TOY)/base
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/python train.py --config configs/toy_cpu.yaml \
		model.pretrained_model=$(TOY)/base/sd data.shards=$(TOY)/shards/train \
		train.output_dir=$(TOY)/multiview
	$(BIN)/python -m viewdiff.toy ship --base $(TOY)/base/sd --export $(TOY)/multiview/model \
		--out $(TOY_ASSETS)
	HF_HUB_OFFLINE=1 $(BIN)/python -m viewdiff.toy picture --checkpoint $(TOY_ASSETS)/multiview \
		--out docs/toy-prior.png

clean-toy:
	rm -rf $(TOY)

# The sided toy world's candidate prior (issue 33), not shipped: sided objects -> whole-frame
# shards -> a toy SD pretrained on them -> the paper's model (configs/toy_sided.yaml) -> its
# figures (bench/toy_quality.py --world toy_sided). SIDED_STEPS sets the fine-tuning budget.
# Resumes what an interrupted run left in $(TOY_SIDED).
TOY_SIDED ?= runs/toy-sided
SIDED_STEPS ?= 10000
toy-sided: $(STAMP)
	$(BIN)/python data/make_synthetic.py --out $(TOY_SIDED)/co3d/train --style toy_sided \
		--sequences 300 --frames 12 --size 96x96 --points 500 --seed 0 --overwrite
	$(BIN)/python data/make_synthetic.py --out $(TOY_SIDED)/co3d/heldout --style toy_sided \
		--sequences 20 --frames 12 --size 96x96 --points 500 --seed 1 --overwrite
	$(BIN)/python data/prepare_co3d.py --co3d-root $(TOY_SIDED)/co3d/train \
		--out $(TOY_SIDED)/shards/train --size 64 --workers 2 --crop full
	$(BIN)/python data/prepare_co3d.py --co3d-root $(TOY_SIDED)/co3d/heldout \
		--out $(TOY_SIDED)/shards/heldout --size 64 --split test --crop full
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/python -m viewdiff.toy pretrain --threads 2 \
		--shards $(TOY_SIDED)/shards/train --heldout $(TOY_SIDED)/shards/heldout \
		--out $(TOY_SIDED)/base
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/python train.py --config configs/toy_sided.yaml \
		model.pretrained_model=$(TOY_SIDED)/base/sd data.shards=$(TOY_SIDED)/shards/train \
		train.output_dir=$(TOY_SIDED)/multiview train.max_steps=$(SIDED_STEPS)
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/python bench/toy_quality.py --world toy_sided \
		--checkpoint $(TOY_SIDED)/multiview/model --work $(TOY_SIDED)/quality

clean-demo:
	rm -rf $(DEMO)
