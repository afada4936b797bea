# Two commands do everything on a fresh machine (see README):
#   make demo   - create .venv, install pinned dependencies, run the main job
#   make test   - create .venv, install pinned dependencies, run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch and torchvision in ONE command with the rest, so pip keeps the pinned torch build.
	$(PY) -m pip install torch==2.13.0 torchvision==0.28.0 -r requirements.txt -e .
	# opencv-python (pulled by trackers) and opencv-python-headless share one cv2 folder; the
	# headless build goes last so cv2 needs no libGL (servers, CUDA containers).
	$(PY) -m pip install --force-reinstall --no-deps $$(grep '^opencv-python-headless==' requirements.txt)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cion demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_out
