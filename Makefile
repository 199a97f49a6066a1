# analogff: `make demo` runs the main job, `make test` runs the tests. Both set themselves up.
PY := .venv/bin/python

.PHONY: setup demo test bench clean-venv
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) experiments/mnist_analog.py $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/engine_speed.py

clean-venv:
	rm -rf .venv
