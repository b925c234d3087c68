# The README's two commands are `make book` and `make test`; both set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SHARED ?= ../shared
MODEL   = build/quartznet15x5_restored.nemo
CONFORMER = build/conformer_hama.nemo
export INTASR_SHARED := $(abspath $(SHARED))

.PHONY: setup model conformer test test-qemu qemu-found book book-check book-quick clean-book clean

setup: $(VENV)/.installed

# torch is pinned to the CPU build through constraints.txt: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/pip install -q -c constraints.txt --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name intasr --display-name "intasr (.venv)" > /dev/null
	touch $@

# The real QuartzNet-15x5 with BatchNorm statistics restored from train-clean-100 (method-notes 8).
# Byte-reproducible whatever OMP_NUM_THREADS is (issue 12); the sha256 is printed for the README's.
model: $(MODEL)
	@$(BIN)/python -c 'import sys; from intasr.provenance import file_sha256; print("sha256", file_sha256(sys.argv[1]), sys.argv[1])' $(MODEL)
$(MODEL): | $(VENV)/.installed
	$(BIN)/intasr restore-bn --out $@

# The hama package's Conformer-CTC with its conv modules' BatchNorm statistics measured on
# train-clean-100 (~1 min): the file chapter 08 and results/conformer_*.csv name by sha256.
# The float kernels are held to their AVX2 versions: an AVX-512 CPU's float32 matmuls round the
# statistics' last bits otherwise, and the file's sha256 with them (an AVX-512 Zen 4 wrote
# 7c3ace54... unpinned, e2ef502f... pinned, the same as an AVX2-only Zen 3).
conformer: $(CONFORMER)
$(CONFORMER): | $(VENV)/.installed
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/intasr import-hama --out $@ --restore-bn --audio $(SHARED)/data/LibriSpeech/train-clean-100 --quiet

test: setup
	$(BIN)/python -m pytest -q

# The CPU-dependent tests on an emulated AVX2 CPU without AVX-512 or VNNI (issue 25), from any
# x86-64 host: `qemu-x86_64 -cpu max` (QEMU 7.2) runs the venv's python and shows it that CPU
# through CPUID (intasr.cpu). The files: the probe, the integer ONNX graph and the runtime skips
# (onnxruntime's kernels are inexact there), the native and intops kernels, the C runtime, the
# scripts' results. Slow: ~10x native. test_native.py's whole-model runner tests (minutes natively,
# the same kernels as its kernel tests) are left out by QEMU_PYTEST; QEMU_TESTS=... runs others.
QEMU       ?= qemu-x86_64
QEMU_CPU   ?= max
QEMU_TESTS ?= tests/test_cpu.py tests/test_deploy.py tests/test_program_backends.py tests/test_native.py \
              tests/test_intops.py tests/test_c_runtime.py tests/test_results_paths.py
QEMU_PYTEST ?= -q -rs -k "not test_fast_runner_on_real_audio and not q_qn"
test-qemu: qemu-found setup
	$(QEMU) -cpu $(QEMU_CPU) $(BIN)/python -m pytest $(QEMU_PYTEST) $(QEMU_TESTS)
qemu-found:   # before setup: say what is missing at once
	@command -v $(QEMU) >/dev/null 2>&1 || { echo "make test-qemu: $(QEMU) not found: install the Debian package qemu-user" >&2; exit 1; }

# Run every notebook headless (papermill) into book/chapters/, then render the HTML book.
NOTEBOOK_PROFILE ?= default
BOOK_OUT ?= build/book
book: setup model conformer
	$(BIN)/python tools/run_notebooks.py --profile $(NOTEBOOK_PROFILE)
	$(BIN)/jupyter-book build . --path-output $(BOOK_OUT)
	@echo "book: $(BOOK_OUT)/_build/html/index.html"

# Open every built page in headless Chromium (Debian package `chromium`), offline: fails on an
# untypeset formula, a missing image or asset, a remote request, or a JavaScript error.
book-check: book
	$(BIN)/python tools/book_check.py $(BOOK_OUT)/_build/html

# What CI builds: the notebooks in the quick profile (a few utterances, short runs), the HTML in
# build/book-quick, and the browser check. The quick chapters replace book/chapters/; a later
# `make book` reruns them with the default parameters (tools/run_notebooks.py's cache).
book-quick:
	$(MAKE) book-check NOTEBOOK_PROFILE=quick BOOK_OUT=build/book-quick

clean-book:
	rm -rf build/book build/book-quick book/chapters

clean: clean-book
	rm -rf build $(VENV)
