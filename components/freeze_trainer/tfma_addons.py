"""TFMA 0.47's package `__init__` imports `tensorflow_model_analysis.addons`, which its wheel does not ship.
The import fails inside TFMA's own try block, which writes `Error importing: cannot import name 'addons'
...` into the user's program (TFX imports TFMA, so `from freeze_trainer import FreezeTrainer` did) and
leaves the rest of TFMA's top-level names unbound. An empty stand-in, registered only where the installed
TFMA has no `addons` of its own, lets that import finish; any other import error of TFMA still prints."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

_TFMA = "tensorflow_model_analysis"


def stand_in_for_missing_tfma_addons() -> None:
    if _TFMA in sys.modules:  # imported already: its message, if any, is out
        return
    spec = importlib.util.find_spec(_TFMA)  # a top-level name: found on the path, not imported
    if spec is None or not spec.submodule_search_locations:
        return
    for location in spec.submodule_search_locations:
        if os.path.exists(os.path.join(location, "addons")) or os.path.exists(os.path.join(location, "addons.py")):
            return
    sys.modules.setdefault(f"{_TFMA}.addons", types.ModuleType(f"{_TFMA}.addons", "Empty: this TFMA ships none."))
