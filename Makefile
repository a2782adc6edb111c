# The two commands of the README, each doing all set-up from a fresh clone.
#   make demo   the main job: the node on a generated RGB-D stream, with results printed
#   make test   the test suite
.PHONY: env demo test

env:
	scripts/bootstrap.sh

demo: env
	.venv/bin/m4sam demo

test: env
	.venv/bin/python -m pytest $(PYTEST_ARGS)
