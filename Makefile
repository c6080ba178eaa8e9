# The two commands a fresh machine needs: `make run` and `make test`. Both create the environment
# (tools/env) when it is missing. Everything runs inside it through `tools/env exec`.
ENV := tools/env exec
PRESET ?= default
PYTEST_ARGS ?=
# pytest-xdist workers for make test (0: one process, no xdist); each test file is one scheduling group (tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: run test lint env data container-smoke bench-pool-mix bench-regression bench-serve bench-scale bench-distribute-trainers bench-default-run clean-env

run:
	$(ENV) python -m pipeline run --preset $(PRESET)

test:
	$(ENV) python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint:
	$(ENV) ruff check .

env:
	tools/env create

data:
	$(ENV) python -m pipeline prepare-data

clean-env:
	tools/env gc

# the OCI image built with podman from the tools/env root filesystem (no registry), and the smoke pipeline in it
# (bench/results/container_smoke.md; needs root; about 3 min the first time, 1 min after)
container-smoke:
	tools/container smoke

# issue #44: supervised vs pseudo-labels with and without the EM-BCTS prior on consistent, uniform and reversed pools at
# relevance 1 and 0.5, seeds 0-2, compute-matched (about 900 steps a model; about 25 min a seed on 2 cores)
bench-pool-mix:
	$(ENV) python bench/pool_mix_bench.py --epochs 30 --mixed-precision mixed_bfloat16 --seeds 0,1,2

# the imbalanced-regression table of issue #9 (8 methods x 5 seeds, 25 epochs each; 33 min on 2 busy cores)
bench-regression:
	$(ENV) nice -n 10 python bench/regression_bench.py --epochs 25 --seeds 0,1,2,3,4

# issue #18: concurrent clients against `python -m pipeline serve` on localhost (V1 batch 1 and 32, 1 and 8 clients, and
# one V2 cell; 20 s a cell) on the model `make run` pushed (serving/longtail)
bench-serve:
	$(ENV) python bench/serve_bench.py

# issue #16: OwnDataExampleGen and LabelStatsGen on a synthetic 28x28 PNG folder at 1x/4x/16x, 1 and 2 Beam workers:
# peak RSS and images/s (bench/results/scale.md). BENCH_SCALE_BASE: train images at 1x
BENCH_SCALE_BASE ?= 10000
bench-scale:
	$(ENV) python bench/scale_bench.py --base $(BENCH_SCALE_BASE)

# issue #31: every Trainer (supervised, the pseudo-label final Trainer, FixMatch, DASO, rotation, MoCo, regression
# with FDS) in one process and on two local workers, 2 seeds, 3 short epochs (bench/results/distribute_trainers.md;
# at most about 23 min on 2 cores, estimated from one-seed runs of 2 epochs x 5 steps beside a CI run)
bench-distribute-trainers:
	$(ENV) python bench/distribute_bench.py --trainer-epochs 3 --max-steps 20 --seeds 0,1

# issue #20: `make run` itself, three seeds, each timed in a fresh process and runs root (about 40 min on 2 cores)
bench-default-run:
	$(ENV) python bench/default_run.py --seeds 0,1,2
