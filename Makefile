# Two entry points, both create a local virtualenv (.venv) and need no internet:
#   make demo   install robaudit and run the main job (an offline audit)
#   make test   install robaudit with its test extra and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the releases this workplace serves from local disk
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export ROBAUDIT_DATA ?= $(abspath ../shared/data)

.PHONY: demo test lint install clean

$(BIN)/robaudit: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/robaudit

demo: install
	$(BIN)/robaudit demo

test: install
	$(BIN)/ruff check robaudit tests benchmarks scripts
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check robaudit tests benchmarks scripts
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
