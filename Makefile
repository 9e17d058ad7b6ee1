# `make demo` and `make test` set everything up on a fresh machine, then run.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dynacnn-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_ARGS ?=

.PHONY: setup data test demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,timm]'
	touch $(STAMP)

data:
	@if [ -e $(FMNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist) \
			|| echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or pass --data-dir)"; \
	fi

setup: $(STAMP) data

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/dynacnn demo $(DEMO_ARGS)

bench: setup
	$(VENV)/bin/dynacnn bench

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
