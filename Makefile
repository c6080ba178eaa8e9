# The two commands a fresh machine needs: `make run` and `make test`. Both create the environment
# (tools/env) when it is missing. Everything runs inside it through `tools/env exec`.
ENV := tools/env exec
PRESET ?= default
PYTEST_ARGS ?=

.PHONY: run test lint env data bench bench-methods bench-ssp clean-env

run:
	$(ENV) python -m pipeline run --preset $(PRESET)

test:
	$(ENV) python -m pytest $(PYTEST_ARGS)

lint:
	$(ENV) ruff check .

env:
	tools/env create

data:
	$(ENV) python -m pipeline prepare-data

clean-env:
	tools/env gc

bench:
	$(ENV) python bench/pipeline_bench.py --preset default --losses ce,logit_adjusted

# the methods table of issue #4 (12 epochs a method; about 20 min at rho=100 and 30 at rho=10 on 2 cores)
bench-methods:
	$(ENV) python bench/methods_bench.py --rho 100
	$(ENV) python bench/methods_bench.py --rho 10

# issue #6: CE / rotation+CE / MoCo+CE / logit-adjusted / best SSP+logit-adjusted at rho=100 (8 rotation + 20 MoCo pre-training epochs, 12 supervised; 32 min on 2 shared cores)
bench-ssp:
	$(ENV) python bench/ssp_bench.py --rho 100
