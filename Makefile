# analogff: `make demo` runs the main job, `make test` runs the tests. Both set themselves up.
PY := .venv/bin/python

.PHONY: setup setup-test demo test bench sweep-bench clean-venv
setup:
	bash scripts/setup.sh

setup-test:
	ANALOGFF_EXTRAS=dev,ray bash scripts/setup.sh

demo: setup
	.venv/bin/analogff run $(ARGS)

test: setup-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	.venv/bin/analogff bench engine $(ARGS)

sweep-bench: setup
	.venv/bin/analogff bench sweep $(ARGS)

clean-venv:
	rm -rf .venv
