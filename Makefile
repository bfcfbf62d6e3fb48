# tracerd: `make help` lists the targets. `make demo` and `make test` work from a
# fresh machine (they run `make setup` first, which is idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
TRACERD := $(VENV)/bin/tracerd

.DEFAULT_GOAL := help
.PHONY: help setup demo test golden-check budget-check packaging-check unit privileged reliability lint typecheck check syscalls proto proto-check serve fixtures bench bench-kernel bench-events bench-hotpath test-arm64 clean

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## install OS packages, kernel headers link, tracefs, .venv (idempotent, root)
	@bash tools/setup.sh

demo: setup ## trace the bundled sample workload and print the strace -c style summary
	$(TRACERD) run --percentiles -- sh examples/workload.sh

test: setup lint typecheck proto-check golden-check budget-check packaging-check ## run every test (unit + privileged BPF), as CI does
	$(PY) tools/gen_syscalls.py --check
	$(PY) tools/gen_signatures.py --check
	$(PY) -m pytest -q -ra tests

# Each example's golden file records its command; compare reruns it (exit 3: regression).
golden-check: setup ## compare each examples/golden/*.sh against its checked-in golden file
	@set -e; for golden in examples/golden/*.golden.json; do \
	  echo "golden-check: $$golden"; \
	  $(TRACERD) golden compare "$$golden"; \
	done

# The seed's renacer.toml held against the examples: CI stops the line on exit 5.
budget-check: setup ## run each examples/golden/*.sh under examples/renacer.toml's budget
	@set -e; for script in examples/golden/*.sh; do \
	  echo "budget-check: $$script"; \
	  env -i PATH=/usr/bin:/bin LC_ALL=C $(TRACERD) run --budget examples/renacer.toml \
	    -- sh "$$script" > /dev/null; \
	done

# systemd-analyze verify on a copy of the unit, hadolint on the Dockerfile (no engine here).
packaging-check: setup ## verify systemd/tracerd.service and lint the Dockerfile (offline)
	@bash tools/check_packaging.sh

unit: setup ## fast pure-logic tests only
	$(PY) -m pytest -q tests/unit

privileged: setup ## real-BPF tests only (root)
	$(PY) -m pytest -q -ra tests/privileged

reliability: setup ## faults and load on the real kernel and daemon (tests/reliability)
	$(PY) -m pytest -q -ra tests/reliability

# Not part of `make test`: an emulated machine (TCG) is slow. ARM64_SCALE=reduced for CI.
test-arm64: setup ## build (cached) an emulated aarch64 Debian guest and run tracerd's tests in it
	@bash tools/arm64/test.sh

lint: setup ## ruff
	$(VENV)/bin/ruff check tracerd tests tools bench

typecheck: setup ## mypy (strict)
	$(VENV)/bin/mypy

check: lint typecheck ## lint and type-check

syscalls: setup ## regenerate the syscall tables and signatures (kernel headers needed)
	$(PY) tools/gen_syscalls.py
	$(PY) tools/gen_signatures.py

proto: setup ## regenerate tracerd/v1/ from proto/tracerd/v1/*.proto
	$(PY) tools/gen_proto.py

proto-check: setup ## fail if tracerd/v1/ is not what `make proto` generates
	$(PY) tools/gen_proto.py --check

serve: setup ## run the daemon in the foreground on /run/tracerd/tracerd.sock
	$(TRACERD) serve

# Needs a quiet machine: nothing else tracing syscalls (the benches warn), ~25 minutes.
bench: setup ## every cost, side by side with the peers: tables on stdout, JSON in bench/results/
	$(PY) bench/suite.py
	$(PY) bench/daemon_cost.py
	$(PY) bench/hotpath.py

bench-hotpath: setup ## what each hot-path design choice costs, in kernel ns (bench/hotpath)
	$(PY) bench/hotpath.py

bench-kernel: setup ## in-kernel and wall cost per syscall vs empty programs (bench/kernel_cost)
	$(PY) bench/kernel_cost.py

bench-events: setup ## events/s streamed over gRPC without loss, vs strace/bpftrace (bench/events_throughput)
	$(PY) bench/events_throughput.py

clean: ## remove the virtualenv and build outputs
	rm -rf $(VENV) build *.egg-info tests/fixtures/bin .pytest_cache .mypy_cache .ruff_cache
