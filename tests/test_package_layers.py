"""The installed package's architecture: policy -> keras -> tfx -> cli, each importing nothing above it,
and one parameter table that every way of running the trainer reaches."""

import ast
import os
import re

import pytest

from freeze_trainer.tfx.trainer_config import TRAINER_PARAMETERS, parameter_table_markdown
from tests.conftest import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "components", "freeze_trainer")
LAYERS = ["policy", "keras", "tfx", "cli"]
# The keras layer by concern, lowest first: a model is built, a policy planned on it, data fed, phases trained.
KERAS_CONCERNS = ["models", "planning", "data", "training"]
# Third-party packages a layer must not import, on top of the layers above it.
FORBIDDEN = {"policy": {"tensorflow", "tf_keras", "keras", "tfx", "tensorflow_transform", "numpy"},
             "keras": {"tfx", "tensorflow_transform", "tensorflow_model_analysis", "tfx_bsl"}}


def _imports(path: str) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def _offending_imports(folder: str, above: set[str], forbidden: set[str]) -> list[str]:
    offending = []
    for path in _python_files(folder):
        for imported in _imports(path):
            if any(imported == a or imported.startswith(a + ".") for a in above) or imported.split(".")[0] in forbidden:
                offending.append(f"{os.path.relpath(path, PACKAGE)} imports {imported}")
    return offending


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_nothing_from_the_layers_above_it(layer):
    above = {f"freeze_trainer.{name}" for name in LAYERS[LAYERS.index(layer) + 1:]}
    assert not _offending_imports(os.path.join(PACKAGE, layer), above, FORBIDDEN.get(layer, set()))


@pytest.mark.parametrize("concern", KERAS_CONCERNS)
def test_each_keras_concern_imports_nothing_from_the_concerns_above_it(concern):
    above = {f"freeze_trainer.keras.{name}" for name in KERAS_CONCERNS[KERAS_CONCERNS.index(concern) + 1:]}
    assert not _offending_imports(os.path.join(PACKAGE, "keras", concern), above, set())


def test_keras_modules_outside_the_concerns_are_process_settings_that_import_no_concern():
    """The keras layer's own top level holds only what every concern may use (the strategy, the autograph
    setting) and the public API in `__init__`."""
    folder = os.path.join(PACKAGE, "keras")
    loose = sorted(name for name in os.listdir(folder) if name.endswith(".py") and name != "__init__.py")
    assert loose == ["distribution.py", "tf_keras_autograph.py"]
    concerns = {f"freeze_trainer.keras.{name}" for name in KERAS_CONCERNS}
    assert not [f"{name} imports {imported}" for name in loose for imported in _imports(os.path.join(folder, name))
                if any(imported.startswith(c) for c in concerns)]
    assert sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))
                  and name != "__pycache__") == sorted(KERAS_CONCERNS)


MAX_FUNCTION_LINES = 60
# Every function of the package and of the code that runs it; nothing is exempt.
FUNCTION_ROOTS = [PACKAGE, os.path.join(REPO_ROOT, "local_runner.py"), os.path.join(REPO_ROOT, "pipelines"),
                  os.path.join(REPO_ROOT, "kubeflow")]


def _python_files(root: str) -> list[str]:
    if root.endswith(".py"):
        return [root]
    return sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names
                  if name.endswith(".py"))


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in (path for root in FUNCTION_ROOTS for path in _python_files(root)):
        with open(path) as f:
            tree = ast.parse(f.read())
        long += [f"{os.path.relpath(path, REPO_ROOT)}:{node.lineno} {node.name} ({lines} lines)"
                 for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and (lines := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES]
    assert not long, long


def test_every_parameter_reaches_the_local_runner_and_a_compiled_pipeline():
    """Per-run parameters are runtime parameters of the compiled spec and options of the local runner;
    compile-time ones are flags of the compiler and options of the local runner."""
    import local_runner
    from kubeflow import compile_pipeline as compile_cli
    from kubeflow.pipeline_definition import PARAMETER_NAMES

    runner_options = {param.name for param in local_runner.main.params}
    compile_options = {param.name for param in compile_cli.main.params}
    unreachable = []
    for parameter in TRAINER_PARAMETERS:
        if parameter.name not in runner_options:
            unreachable.append(f"{parameter.name}: no local runner option")
        if parameter.per_run and parameter.name not in PARAMETER_NAMES:
            unreachable.append(f"{parameter.name}: per-run but not a runtime parameter of the compiled pipeline")
        if parameter.name not in compile_options:
            unreachable.append(f"{parameter.name}: no compile flag")
    assert not unreachable


def test_the_pipeline_options_and_their_defaults_are_declared_once():
    """Every PipelineOptions field is an option of the local runner and a flag of the compiler, with the
    model's default; the demo changes only the two it names (its image size and accuracy floor)."""
    import local_runner
    from kubeflow import compile_pipeline as compile_cli
    from pipelines.demo_backbone import IMAGE_SIZE
    from pipelines.pipeline_options import PipelineOptions

    runner = {param.name: param.default for param in local_runner.main.params}
    compiler = {param.name: param.default for param in compile_cli.main.params}
    defaults = PipelineOptions().model_dump()
    assert {name: compiler[name] for name in defaults} == defaults
    assert {name: runner[name] for name in defaults} == {**defaults, "image_size": IMAGE_SIZE, "accuracy_floor": 0.4}


def test_the_component_spec_and_signature_come_from_the_table():
    import inspect

    from freeze_trainer import FreezeTrainer
    from freeze_trainer.tfx.component import FreezeTrainerSpec

    names = [parameter.name for parameter in TRAINER_PARAMETERS]
    assert set(names) <= set(FreezeTrainerSpec.PARAMETERS)
    signature = inspect.signature(FreezeTrainer.__init__)
    assert set(names) <= set(signature.parameters)
    for parameter in TRAINER_PARAMETERS:
        assert parameter.doc in FreezeTrainer.__doc__ or parameter.name == "freeze_policy"
    with pytest.raises(TypeError, match="unknown parameter.*'epoch'"):
        FreezeTrainer(examples=None, transform_graph=None, freeze_policy="{}", epoch=3)


def test_the_readme_parameter_table_is_the_table():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    assert parameter_table_markdown() in readme
    assert readme.count("| `") >= len(TRAINER_PARAMETERS)


def _listed_run_parameters(text: str) -> list[str]:
    """The names of a README's "Run parameters (...): `a`, `b`, ..." sentence, in order."""
    listed = re.search(r"Run parameters \([^)]*\):\s(.*?)\.\s", text, re.DOTALL)
    return re.findall(r"`(\w+)`", listed.group(1))


@pytest.mark.parametrize("readme", ["README.md", "kubeflow/README.md"])
def test_the_readme_run_parameter_list_is_the_compiled_pipelines(readme):
    """The run parameters the READMEs list are the runtime parameters of every compiled spec (which
    tests/test_kubeflow_compile.py reads back from one)."""
    from kubeflow.pipeline_definition import PARAMETER_NAMES

    with open(os.path.join(REPO_ROOT, readme)) as f:
        assert _listed_run_parameters(f.read()) == list(PARAMETER_NAMES)
