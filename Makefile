# handoff — the commands a user runs. `make setup` is idempotent: a second run takes seconds.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
# pip's notes about unreadable local index entries are noise; its errors still fail the build
QUIET_PIP := { grep -v '^WARNING: Location' || true; }
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.handoff-setup
ROS_PKG := ros2_ws/src/handoff_ros
APT_PACKAGES := libosmesa6 libgl1 libglib2.0-0
TORCH_VERSION := 2.13.0
# Which torch build: auto (cuda when `nvidia-smi -L` lists a GPU, else cpu), cpu or cuda.
# cpu installs torch==$(TORCH_VERSION)+cpu: from pip's configured sources if they hold it (a local
# wheel), else from PyTorch's CPU index (~200 MB, not PyPI's multi-GB CUDA build). cuda installs
# PyPI's torch==$(TORCH_VERSION) (its Linux wheel is the CUDA build). TORCH_INDEX=URL: torch from
# that index instead. A torch already in the venv is kept, whatever its build.
TORCH ?= auto
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# DDS stays on this machine: every ROS process started from here sees only loopback peers.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(ROS_PKG)/setup.py
	@$(PYTHON) -c 'import sys; v=sys.version_info[:2]; sys.exit(0 if (3,10)<=v<=(3,12) else "handoff needs Python 3.10-3.12, found %d.%d" % v)'
	@if ! ldconfig -p | grep -q libOSMesa; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages: $(APT_PACKAGES)"; \
	    (apt-get install -y -q --no-install-recommends $(APT_PACKAGES) >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(APT_PACKAGES) >/dev/null)); \
	  else \
	    echo "off-screen rendering needs OSMesa; run: sudo apt-get install -y $(APT_PACKAGES)"; \
	  fi; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned, so nothing pulls a multi-GB CUDA build onto a CPU machine
	@$(PY) -m pip install -q --upgrade pip setuptools wheel 2>&1 | $(QUIET_PIP)
	@if ! $(PY) -c 'import torch' 2>/dev/null; then \
	  kind=$(TORCH); \
	  if [ "$$kind" = auto ]; then \
	    if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; then kind=cuda; else kind=cpu; fi; \
	  fi; \
	  case "$$kind" in cpu|cuda) ;; *) echo "TORCH=$$kind: choose auto, cpu or cuda"; exit 2;; esac; \
	  echo "installing torch $(TORCH_VERSION), $$kind build (TORCH=$(TORCH); choose with make setup TORCH=cpu|cuda)"; \
	  if [ -n "$(TORCH_INDEX)" ]; then \
	    $(PY) -m pip install -q torch==$(TORCH_VERSION) --index-url $(TORCH_INDEX) 2>&1 | $(QUIET_PIP); \
	  elif [ "$$kind" = cpu ]; then \
	    $(PY) -m pip install -q torch==$(TORCH_VERSION)+cpu 2>/dev/null || \
	      $(PY) -m pip install -q torch==$(TORCH_VERSION)+cpu --extra-index-url $(TORCH_CPU_INDEX) 2>&1 | $(QUIET_PIP); \
	  else \
	    $(PY) -m pip install -q torch==$(TORCH_VERSION) 2>&1 | $(QUIET_PIP); \
	  fi; \
	  $(PY) -c 'import torch' 2>/dev/null || { echo "torch==$(TORCH_VERSION) ($$kind) failed to install"; exit 1; }; \
	fi
	$(PY) -m pip install -q -e '.[ros,interop,dev]' -e $(ROS_PKG) 2>&1 | $(QUIET_PIP)
	@$(PY) -m pip check
	@$(PY) -c 'import data, policies, sim, rclpy, robosuite, handoff_ros' 2>&1 | { grep -v 'robosuite WARNING' || true; }
	@touch $(STAMP)
	@$(PY) -c 'import torch; c = torch.version.cuda; print("setup done: $(VENV) with torch", torch.__version__, f"(CUDA {c} build)" if c else "(CPU build)")'

# -p no:launch_testing: launch_testing's pytest plugin (from a sourced ROS 2 or the launch
# tooling tests/handoff_ros/test_launch_run.py builds) needs pytest < 9; those tests run ros2 launch instead
test: setup
	$(PY) -m pytest -q -p no:launch_testing

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# make demo DEMO_ARGS="--policy diffusion" | "--cameras" | "--fresh" | "--quick"
demo: setup
	$(PY) -m handoff_ros.demo $(DEMO_ARGS)

bench: setup
	$(PY) tests/benchmarks/run_all.py

clean:
	rm -rf $(VENV) ros2_ws/build ros2_ws/install ros2_ws/log
