# `make run`, `make test`, `make plan` and `make bench` set up the environment they need: uv into an
# existing $(PYTHON) (never Python itself), then the locked environment with every extra in .venv.
PYTHON ?= python3.10
VENV := .venv
STAMP := $(VENV)/.synced
POLICY ?= kubeflow/policies/head_then_top.json
UV_VERSION := 0.13.9
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export UV_PYTHON_DOWNLOADS := never

.PHONY: env run test pretrain plan bench clean

env: $(STAMP)

# --compile-bytecode: uv installs sources only, and where PYTHONDONTWRITEBYTECODE is set (CI images often
# set it) every process, Beam's workers too, would compile TensorFlow's and TFX's ~7,500 modules again:
# ~12 s per process here.
$(STAMP): pyproject.toml uv.lock Makefile
	$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(PYTHON) -m uv sync --frozen --all-extras --compile-bytecode --python "$$($(PYTHON) -c 'import sys; print(sys.executable)')"
	touch $@

run: env  ## the local demo pipeline on the embedded digits, ending with a pushed model
	$(VENV)/bin/python local_runner.py $(ARGS)

test: env  ## the whole suite
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

pretrain: env  ## rebuild the demo backbone and its transfer report
	$(VENV)/bin/python -m pipelines.pretrain_backbone

plan: env  ## print POLICY's plan on MobileNetV2 at 224 px; ARGS="--layers", "--format json", "--picture plan.png"
	$(VENV)/bin/freeze-policy plan $(POLICY) --backbone MobileNetV2 --image-size 224 $(ARGS)

bench: env  ## training throughput of both loops against forward-only and full fine-tuning; ARGS="--suite gpu"
	$(VENV)/bin/python benchmarks/training_throughput.py $(ARGS)

clean:
	rm -rf runs $(VENV)
