# qlora-lab: two commands do everything on a fresh machine.
#   make book   build the HTML course (creates .venv on first use)
#   make test   the whole test suite (unit tests, notebooks via nbval, labs, book in a browser)
#   make lab    JupyterLab on the course, in French (make lab LAB_ARGS="--port 8890 --no-browser")
#   make formgrader   JupyterLab on labs/ with nbgrader's instructor tools
# GPU users: make TORCH_INDEX=https://download.pytorch.org/whl/cu128 test   (see README)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU wheel by default: an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PIP_TORCH_OPTS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple,)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv book browser sandbox test lab formgrader labs-release labs-grade bench mutation clean

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP_TORCH_OPTS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Offline: MathJax, require.js and the widget manager come from book/offline/.
# A notebook cell error fails the build (execute.raise_on_error in _config.yml).
# --all rewrites every page so that each one's navigation lists new chapters; notebooks
# are still re-executed only when their code changed (jupyter-cache in _build/).
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --builder html --all
	@echo "Book built: open $(CURDIR)/_build/html/index.html"

# Debian's Chromium for tests/test_book.py (Playwright drives it; it downloads nothing).
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "Chromium is missing: run 'sudo apt-get install chromium' (tests/test_book.py needs it)"; exit 1; \
	  fi; }

# Debian's bubblewrap: `make labs-grade` runs each student's notebook in its own sandbox
# (qlora_lab/grading/sandbox.py) and refuses to grade without it.
sandbox:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; \
	  else \
	    echo "bubblewrap is missing: run 'sudo apt-get install bubblewrap' (make labs-grade needs it)"; exit 1; \
	  fi; }

# Each notebook runs once: nbval executes notebooks/ and its run is stored in the book's
# cache (conftest.py), so the book build that follows executes nothing and shows what nbval
# checked; then tests/ checks the fresh site (tests/test_book.py) and everything else.
# Every step runs even if an earlier one failed; any failure fails `make test`.
test: $(STAMP) browser sandbox
	@status=0; \
	$(PY) -m pytest notebooks || status=1; \
	$(MAKE) --no-print-directory book || status=1; \
	$(PY) -m pytest tests || status=1; \
	exit $$status

# JupyterLab's configuration lives in jupyter_config/, never in the user's home:
#   settings/overrides.json   French UI (jupyterlab-language-pack-fr-fr), no Jupyter news toast
#   student/                  nbgrader's menus and panels off (lab and server extensions)
#   instructor/               nbgrader on, for `make formgrader` (run from labs/, its course folder)
# JUPYTER_CONFIG_DIR points there, so the user's ~/.jupyter is left alone (and unread); what
# JupyterLab saves (settings changed by hand, workspaces) goes to jupyter_config/*/lab/.
# LAB_ARGS reaches `jupyter lab` as is: --port 8890 --no-browser --ip 0.0.0.0 --IdentityProvider.token=...
# Jupyter refuses to run as root without --allow-root (containers, cloud notebooks): added as root only.
LAB_ARGS ?=
JUPYTER_DIR := $(abspath jupyter_config)
ALLOW_ROOT = $(if $(filter 0,$(shell id -u)),--allow-root,)
JUPYTER_LAB = $(abspath $(VENV))/bin/jupyter lab --LabApp.app_settings_dir=$(JUPYTER_DIR)/settings $(ALLOW_ROOT) $(LAB_ARGS)

lab: $(STAMP)
	JUPYTER_CONFIG_DIR=$(JUPYTER_DIR)/student $(JUPYTER_LAB) notebooks/

formgrader: $(STAMP)
	cd labs && JUPYTER_CONFIG_DIR=$(JUPYTER_DIR)/instructor $(JUPYTER_LAB) .

labs-release: $(STAMP)
	$(PY) -m qlora_lab.grading release labs

labs-grade: $(STAMP) sandbox
	$(PY) -m qlora_lab.grading grade labs

bench: $(STAMP)
	$(PY) benchmarks/bench_quant.py

# Mutation testing of the course's arithmetic (quant, LoRA, FLOPs, memory, validation loss):
# slow (about 2 h on 2 cores), not part of `make test`. MUTANTS='qlora_lab.quant.nf4.*' runs
# one module; the report lands in benchmarks/results/mutation_report.md.
MUTATION_JOBS ?= 1
MUTANTS ?=
mutation: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(PY) benchmarks/mutation_report.py

clean:
	rm -rf _build .pytest_cache mutants
