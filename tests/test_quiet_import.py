"""Importing the trainer into a user's own program prints nothing of its own: TFMA 0.47's packaging error
(`Error importing: cannot import name 'addons' ...`, printed whenever TFX imports TFMA) is gone, and TFMA
finishes its import."""

import os
import subprocess
import sys

# TensorFlow's own C++ start-up lines and google-api-core's note about this Python version are the user's
# environment, switched off as a user would; everything else the import writes is asserted empty.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3"}
PYTHON_VERSION_NOTE = "ignore::FutureWarning:google.api_core._python_version_support"


def _fresh_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    return subprocess.run([sys.executable, "-W", PYTHON_VERSION_NOTE, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**environment, **QUIET_ENVIRONMENT})


def test_importing_the_trainer_prints_nothing(tmp_path):
    result = _fresh_python("from freeze_trainer import FreezeTrainer", tmp_path)
    assert result.returncode == 0
    assert (result.stdout, result.stderr) == ("", "")


def test_tfma_imports_whole_after_the_trainer(tmp_path):
    result = _fresh_python("import freeze_trainer, tensorflow_model_analysis as tfma; print(tfma.metrics.__name__, "
                           "tfma.EvalResult.__name__)", tmp_path)
    assert (result.stdout, result.stderr) == ("tensorflow_model_analysis.metrics EvalResult\n", "")
