# Developer shortcuts. The README's two commands do not need make.
PY ?= .venv/bin/python
PROTO_DIR := tinkjax/codec/_pb

.PHONY: test demo notebooks lint typecheck proto bench clean

test:            ## create .venv, install everything, run the suite
	bash scripts/test.sh

demo:            ## the main job on the embedded backend
	bash scripts/demo.sh

notebooks:       ## re-execute notebooks/*.ipynb in a Jupyter kernel and save them with outputs
	$(PY) scripts/notebooks.py

lint:
	$(PY) -m ruff check tinkjax kernels tests bench examples

typecheck:
	$(PY) -m mypy

proto:           ## regenerate the protobuf module (needs the `proto` extra)
	PATH="$(dir $(PY)):$$PATH" $(PY) -m grpc_tools.protoc -I$(PROTO_DIR) --python_out=$(PROTO_DIR) --mypy_out=$(PROTO_DIR) $(PROTO_DIR)/tinkjax_wire.proto

bench:
	$(PY) bench/codec_bench.py

clean:
	rm -rf .venv build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .jax_cache
