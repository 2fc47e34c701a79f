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

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Tiny models gain nothing from more threads, and on a busy 2-core machine torch's default of one
# thread per core (times the test's worker processes) oversubscribes it: 100x slower steps seen.
export OMP_NUM_THREADS ?= 1

.PHONY: test demo lint format clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(PIP_ARGS)
	$(BIN)/python -m pip install -q -e ".[dev]" $(PIP_ARGS)
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The main job on the embedded default (configs/tiny_cpu.yaml), offline, on a CPU.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m viewdiff.tiny $(DEMO)/tiny-sd
	mkdir -p $(DEMO)
	$(BIN)/python train.py --config configs/tiny_cpu.yaml --print-config > $(DEMO)/config.yaml
	$(BIN)/python data/make_synthetic.py --out $(DEMO)/co3d --sequences 2 --frames 24 \
		--size 160x120 --overwrite
	$(BIN)/python data/prepare_co3d.py --co3d-root $(DEMO)/co3d --out $(DEMO)/shards --size 64 \
		--max-frames 12 --samples-per-shard 4
	$(BIN)/python data/preview_batch.py --shards $(DEMO)/shards --out $(DEMO)/batch.png --n-views 4
	rm -rf $(DEMO)/train
	HF_HUB_OFFLINE=1 $(BIN)/python train.py --config configs/tiny_cpu.yaml \
		model.pretrained_model=$(DEMO)/tiny-sd data.shards=$(DEMO)/shards \
		train.output_dir=$(DEMO)/train
	$(BIN)/python infer.py cameras --out $(DEMO)/cameras --views 8 --image-size 128
	HF_HUB_OFFLINE=1 $(BIN)/python infer.py sample --checkpoint $(DEMO)/train/model \
		--prompt "a red box" --views 8 --out $(DEMO)/sample
	HF_HUB_OFFLINE=1 $(BIN)/python infer.py sample --checkpoint $(DEMO)/train/model \
		--prompt "a red box" --views 36 --window 8 --max-conditions 8 --out $(DEMO)/turntable
	@echo "demo: tiny pipeline $(DEMO)/tiny-sd, config $(DEMO)/config.yaml," \
		"synthetic CO3D $(DEMO)/co3d, shards $(DEMO)/shards, a batch $(DEMO)/batch.png," \
		"cameras $(DEMO)/cameras/, training $(DEMO)/train (export $(DEMO)/train/model," \
		"grids $(DEMO)/train/validation, tensorboard --logdir $(DEMO)/train/logs)," \
		"a sample $(DEMO)/sample/ (views/, grid.png, cameras.json) and a 36-view turntable" \
		"$(DEMO)/turntable/turntable.mp4 (.gif) in 5 sliding windows"

clean-demo:
	rm -rf $(DEMO)
