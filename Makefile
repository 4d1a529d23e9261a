# The two commands of the README. Both install what they need first (scripts/bootstrap.sh).
#   make demo   - the local stack + jobs + bridge + API, and a simulated fleet flowing through it
#   make test   - unit, pipeline and integration tests against a real local stack (CI runs this)
DEVICES ?= 200
RATE ?= 2
DURATION ?= 60
PYTEST_ARGS ?=

.PHONY: demo test unit bootstrap stack-up stack-down bench

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/fleet demo --devices $(DEVICES) --rate $(RATE) --duration $(DURATION)

test: bootstrap
	scripts/run-tests.sh $(PYTEST_ARGS)

unit: bootstrap
	.venv/bin/python -m pytest -q tests/unit

stack-up: bootstrap
	.venv/bin/fleet stack up

stack-down:
	.venv/bin/fleet stack down

bench: bootstrap
	.venv/bin/python bench/bridge_bench.py
