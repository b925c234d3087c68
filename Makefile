# The README's two commands are `make book` and `make test`; both set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SHARED ?= ../shared
MODEL   = build/quartznet15x5_restored.nemo
export ASRQUANT_SHARED := $(abspath $(SHARED))

.PHONY: setup model test book clean-book clean

setup: $(VENV)/.installed

# torch is pinned to the CPU build through constraints.txt: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/pip install -q -c constraints.txt --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name asrquant --display-name "asrquant (.venv)" > /dev/null
	touch $@

# The real QuartzNet-15x5 with BatchNorm statistics restored from train-clean-100 (method-notes 8).
# Byte-reproducible whatever OMP_NUM_THREADS is (issue 12); the sha256 is printed for the README's.
model: $(MODEL)
	@$(BIN)/python -c 'import sys; from asrquant.provenance import file_sha256; print("sha256", file_sha256(sys.argv[1]), sys.argv[1])' $(MODEL)
$(MODEL): | $(VENV)/.installed
	$(BIN)/asrquant restore-bn --out $@

test: setup
	$(BIN)/python -m pytest -q

# Run every notebook headless (papermill) into book/chapters/, then render the HTML book.
book: setup model
	$(BIN)/python tools/run_notebooks.py
	$(BIN)/jupyter-book build . --path-output build/book
	@echo "book: build/book/_build/html/index.html"

clean-book:
	rm -rf build/book book/chapters

clean: clean-book
	rm -rf build $(VENV)
