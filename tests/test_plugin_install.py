"""The plugin as a new TFX team gets it: the wheel, installed into a fresh virtualenv, used from a repository of
their own that keeps the TFX-template layout (its own `components/` and `pipelines/`), in a process that
never heard of TF_USE_LEGACY_KERAS. Plus the Keras 3 guard, in subprocesses of this virtualenv.

The fresh virtualenv gets the heavy dependencies (TFX, TensorFlow, Beam) cheaply: a `.pth` file lists this
virtualenv's site-packages as a plain path line, which puts the directory on sys.path without running the
`.pth` files inside it, so this checkout's editable `freeze_trainer` finder stays inactive there and
`freeze_trainer` can only come from the installed wheel.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT

PROJECT_SITE_PACKAGES = sysconfig.get_path("purelib")
BACKBONE_WEIGHTS = os.path.join(REPO_ROOT, "pretrained", "mobilenetv2_035_digits0to4.keras")
SAMPLE = 200
EPOCHS = 2
IMAGE_SIZE = 32
PIPELINE_NAME = "user-digits"
# Whatever could let this checkout leak into a child process, or pre-set the Keras choice for it.
LEAKY_ENV = ("TF_USE_LEGACY_KERAS", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")


def clean_env(bin_dir: str | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in LEAKY_ENV}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONNOUSERSITE"] = "1"
    if bin_dir:  # what activating the virtualenv would do
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def tail(result: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return f"rc={result.returncode}\n--- stdout\n{result.stdout[-chars:]}\n--- stderr\n{result.stderr[-chars:]}"


# --------------------------------------------------------------------------------------------------- the wheel


def _checkout_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a fresh clone (plus uncommitted work) holds."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode()
    return [path for path in listed.split("\0") if path and os.path.isfile(os.path.join(REPO_ROOT, path))]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (building in place would write build/ and egg-info into
    the shared working tree)."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"
    for path in _checkout_files():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(REPO_ROOT, path), source / path)
    out = scratch / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, tail(result)
    [built] = out.glob("freeze_trainer-*.whl")
    return built


def wheel_metadata(wheel_path: Path) -> tuple[list[str], list[str], str]:
    """(top_level.txt lines, the archive's top-level names, METADATA text)."""
    with zipfile.ZipFile(wheel_path) as archive:
        names = archive.namelist()
        [dist_info] = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
        top_level = archive.read(f"{dist_info}/top_level.txt").decode().split()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    roots = sorted({name.split("/")[0] for name in names} - {dist_info})
    return top_level, roots, metadata


def core_requirements(metadata: str) -> list[str]:
    """The Requires-Dist lines that apply without any extra."""
    lines = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    markers = {line: Requirement(line).marker for line in lines}
    return [line for line in lines if markers[line] is None or markers[line].evaluate({"extra": ""})]


def test_wheel_installs_one_import_package_freeze_trainer(wheel):
    top_level, roots, metadata = wheel_metadata(wheel)
    assert top_level == ["freeze_trainer"]
    assert roots == ["freeze_trainer"], roots  # no components/, pipelines/, kubeflow/, tests/, local_runner.py
    # Every file of the package's source tree is in the wheel: pyproject's explicit package list misses none.
    source_prefix = "components/freeze_trainer/"
    source = {"freeze_trainer/" + path[len(source_prefix):]
              for path in _checkout_files() if path.startswith(source_prefix)}
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name for name in archive.namelist() if name.startswith("freeze_trainer/")}
    assert packaged == source, {"missing": sorted(source - packaged), "extra": sorted(packaged - source)}
    assert {"freeze_trainer/tfx/component.py", "freeze_trainer/legacy_keras.py"} <= packaged
    # The demo's and the tests' needs stay behind extras.
    core = {canonicalize_name(Requirement(line).name) for line in core_requirements(metadata)}
    assert {"tfx", "tensorflow", "tf-keras"} <= core
    assert not core & {"scikit-learn", "pytest", "hypothesis", "kfp"}


# ------------------------------------------------------------------------------------------ the fresh venv


@dataclass
class Venv:
    root: Path
    python: str
    bin_dir: str
    site_packages: str

    def run(self, args: list[str], cwd, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, *args], cwd=cwd, env=clean_env(self.bin_dir), capture_output=True,
                              text=True, timeout=timeout)

    def start(self, args: list[str], cwd, log: Path) -> subprocess.Popen:
        """`run` in the background, its output in `log`.out and `log`.err."""
        with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
            process = subprocess.Popen([self.python, *args], cwd=cwd, env=clean_env(self.bin_dir), stdout=out,
                                       stderr=err, text=True)
        process.log = log
        return process


def finish(process: subprocess.Popen, deadline: float) -> subprocess.CompletedProcess:
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, Path(f"{process.log}.out").read_text(),
                                       Path(f"{process.log}.err").read_text())


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory, wheel) -> Venv:
    root = tmp_path_factory.mktemp("venv") / "team-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = str(root / "bin" / "python")
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, env=clean_env(),
    ).stdout.strip()
    assert site_packages.startswith(str(root)), site_packages
    # A path line, not an `import` line: the directory joins sys.path; its own .pth files do not run.
    Path(site_packages, "zz_project_dependencies.pth").write_text(PROJECT_SITE_PACKAGES + "\n")
    venv = Venv(root, python, str(root / "bin"), site_packages)
    # pip comes from the dependencies (`pip>=24` is a core requirement). `--ignore-installed`: the project's
    # own editable freeze-trainer metadata is visible through the .pth; it must be neither "already
    # satisfying" the wheel nor touched.
    result = venv.run(["-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                       "--disable-pip-version-check", str(wheel)], cwd=root.parent)
    assert result.returncode == 0, tail(result)
    return venv


# Runs in the fresh venv: where freeze_trainer comes from, every submodule imports, every core requirement
# is installed at a version it allows and its packages import; then which files the process loaded.
VENV_PROBE = textwrap.dedent(
    """
    import importlib, importlib.metadata as md, json, os, pkgutil, sys
    from packaging.requirements import Requirement
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    import freeze_trainer
    report = {
        "freeze_trainer_file": freeze_trainer.__file__,
        "legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
        "editable_finder_loaded": any("editable" in name for name in sys.modules),
        "editable_finder_on_meta_path": any("editable" in type(f).__module__ for f in sys.meta_path),
        "dist_location": str(md.distribution("freeze-trainer").locate_file("")),
        "dist_requires": md.distribution("freeze-trainer").requires,
    }
    report["submodules"] = sorted(
        info.name for info in pkgutil.walk_packages(freeze_trainer.__path__, "freeze_trainer."))
    for name in report["submodules"]:
        importlib.import_module(name)
    def top_level_names(dist):  # from the installed files (Python 3.10 reads only top_level.txt)
        names = set()
        for file in dist.files or []:
            head = file.parts[0]
            if head == ".." or head == "__pycache__" or head.endswith((".dist-info", ".data", ".egg-info")):
                continue
            names.add(head if len(file.parts) > 1 else file.name.split(".")[0])
        return sorted(name for name in names if name.isidentifier() and not name.startswith("_"))

    requirements = {}
    for line in json.loads(sys.argv[1]):
        requirement = Requirement(line)
        try:
            version = md.version(requirement.name)
        except md.PackageNotFoundError:
            version = None
        imported = []
        for top in top_level_names(md.distribution(requirement.name)) if version else []:
            importlib.import_module(top)
            imported.append(top)
        requirements[line] = {"version": version, "allowed": version is not None and
                              requirement.specifier.contains(version, prereleases=True), "imported": imported}
    report["requirements"] = requirements
    import tensorflow as tf
    report["tf_keras"] = tf.keras.__name__
    report["modules"] = {n: m.__file__ for n, m in list(sys.modules.items()) if getattr(m, "__file__", None)}
    print("PROBE " + json.dumps(report))
    """
)


def _probe_json(result: subprocess.CompletedProcess) -> dict:
    [line] = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    return json.loads(line[len("PROBE "):])


@dataclass
class UserRun:
    user_repo: Path
    output_dir: Path
    result: subprocess.CompletedProcess
    report: dict | None


@pytest.fixture(scope="module")
def venv_runs(plugin_venv, wheel, tmp_path_factory) -> tuple[subprocess.CompletedProcess, UserRun]:
    """The probe and the user's pipeline in the fresh venv, side by side: each keeps about one core busy
    most of the time, and both start by importing TensorFlow and TFX."""
    from pipelines.digits_data import write_digits_examples  # the checkout's demo data, written from here

    scratch = tmp_path_factory.mktemp("venv_runs")
    _, _, metadata = wheel_metadata(wheel)
    (scratch / "probe").mkdir()
    started = []
    try:
        deadline = time.monotonic() + 600
        started.append(plugin_venv.start(["-c", VENV_PROBE, json.dumps(core_requirements(metadata))],
                                         cwd=scratch / "probe", log=scratch / "probe"))
        data_root = write_digits_examples(str(scratch / "data" / "digits"), limit=SAMPLE)
        user_repo = scratch / "my-tfx-project"
        for path, text in USER_FILES.items():
            (user_repo / path).parent.mkdir(parents=True, exist_ok=True)
            (user_repo / path).write_text(textwrap.dedent(text).lstrip())
        output_dir = scratch / "output"
        report_path = scratch / "report.json"
        started.append(plugin_venv.start(
            ["local_runner.py", data_root, str(output_dir), BACKBONE_WEIGHTS, str(report_path)],
            cwd=user_repo, log=scratch / "user_run",
        ))
        probe, user = (finish(process, deadline) for process in started)
    finally:
        for process in started:  # only after a failure here are any still running
            if process.poll() is None:
                process.kill()
                process.wait()
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return probe, UserRun(user_repo, output_dir, user, report)


@pytest.fixture(scope="module")
def venv_probe(venv_runs) -> dict:
    result, _ = venv_runs
    assert result.returncode == 0, tail(result)
    return _probe_json(result)


@pytest.fixture(scope="module")
def user_run(venv_runs) -> UserRun:
    _, run = venv_runs
    assert run.result.returncode == 0, tail(run.result, 8000)
    return run


def test_fresh_venv_imports_freeze_trainer_from_the_wheel_not_the_checkout(plugin_venv, venv_probe):
    location = venv_probe["freeze_trainer_file"]
    assert location == os.path.join(plugin_venv.site_packages, "freeze_trainer", "__init__.py")
    assert not location.startswith(REPO_ROOT + os.sep)
    assert not venv_probe["editable_finder_loaded"] and not venv_probe["editable_finder_on_meta_path"]
    assert os.path.samefile(venv_probe["dist_location"], plugin_venv.site_packages)
    assert venv_probe["legacy_keras"] == "1" and venv_probe["tf_keras"].startswith("tf_keras.")
    # Every module of the installed package imports there, the Vertex extension included.
    assert "freeze_trainer.tfx.vertex_trainer" in venv_probe["submodules"]
    assert len(venv_probe["submodules"]) > 20
    # The console script the wheel declares works.
    result = subprocess.run([os.path.join(plugin_venv.bin_dir, "freeze-policy"), "schema"], capture_output=True,
                            text=True, env=clean_env(plugin_venv.bin_dir), timeout=120, cwd=plugin_venv.root)
    assert result.returncode == 0, tail(result)
    assert "rules" in json.loads(result.stdout)["properties"]


def test_every_core_requirement_is_installed_at_an_allowed_version_and_imports(wheel, venv_probe):
    _, _, metadata = wheel_metadata(wheel)
    core = core_requirements(metadata)
    assert venv_probe["dist_requires"] == [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                                           if line.startswith("Requires-Dist:")]
    assert sorted(venv_probe["requirements"]) == sorted(core)
    for line, found in venv_probe["requirements"].items():
        assert found["version"] is not None, f"{line}: not installed"
        assert found["allowed"], f"{line}: installed {found['version']}"
        assert found["imported"], f"{line}: no importable package"


# ------------------------------------------------------------------------------------- the user's repository

USER_FILES = {
    "components/__init__.py": "",
    "components/my_component.py": '''
        """The team's own component module: `components` is their package, as in the TFX template."""

        OWNER = "user-repo"


        def describe() -> str:
            return f"components.my_component of {OWNER}"
    ''',
    "pipelines/__init__.py": "",
    "pipelines/pipeline.py": f'''
        """The team's pipeline: their data through Transform, then the plugin's trainer, then a push."""

        from freeze_trainer import FreezeTrainer  # first: it picks tf-keras before TFX imports TensorFlow

        from tfx.components import ImportExampleGen, Pusher, SchemaGen, StatisticsGen, Transform
        from tfx.orchestration import pipeline
        from tfx.proto import pusher_pb2

        FROZEN_BASE = '{{"version": 1, "rules": [{{"freeze": {{"base": true}}}}]}}'


        def create_pipeline(pipeline_root, data_root, serving_dir, backbone_weights, metadata_connection_config):
            example_gen = ImportExampleGen(input_base=data_root)
            statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
            schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
            transform = Transform(
                examples=example_gen.outputs["examples"],
                schema=schema_gen.outputs["schema"],
                preprocessing_fn="freeze_trainer.tfx.image_transform.preprocessing_fn",
                custom_config={{"image_size": {IMAGE_SIZE}}},
                disable_statistics=True,
            )
            trainer = FreezeTrainer(
                examples=transform.outputs["transformed_examples"],
                transform_graph=transform.outputs["transform_graph"],
                schema=schema_gen.outputs["schema"],
                freeze_policy=FROZEN_BASE,
                backbone="MobileNetV2",
                backbone_weights=backbone_weights,
                epochs={EPOCHS},
            )
            # No model_blessing: TFX's Pusher then pushes unconditionally.
            pusher = Pusher(
                model=trainer.outputs["model"],
                push_destination=pusher_pb2.PushDestination(
                    filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_dir)
                ),
            )
            return pipeline.Pipeline(
                pipeline_name="{PIPELINE_NAME}",
                pipeline_root=pipeline_root,
                components=[example_gen, statistics_gen, schema_gen, transform, trainer, pusher],
                enable_cache=False,
                metadata_connection_config=metadata_connection_config,
                beam_pipeline_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"],
            )
    ''',
    "local_runner.py": '''
        """The team's runner: LocalDagRunner, SQLite ML Metadata."""

        import importlib.util
        import json
        import os
        import sys

        assert "TF_USE_LEGACY_KERAS" not in os.environ, "the test must start without it"

        from freeze_trainer import FreezeTrainer

        import components
        from components import my_component
        import pipelines
        from pipelines.pipeline import create_pipeline

        from tfx.orchestration.local.local_dag_runner import LocalDagRunner
        from tfx.orchestration.metadata import sqlite_metadata_connection_config

        data_root, output_dir, backbone_weights, report_path = sys.argv[1:]
        LocalDagRunner().run(
            create_pipeline(
                pipeline_root=os.path.join(output_dir, "pipeline_root"),
                data_root=data_root,
                serving_dir=os.path.join(output_dir, "serving"),
                backbone_weights=backbone_weights,
                metadata_connection_config=sqlite_metadata_connection_config(
                    os.path.join(output_dir, "metadata.sqlite")),
            )
        )

        import freeze_trainer
        import tensorflow as tf

        with open(report_path, "w") as f:
            json.dump({
                "freeze_trainer_file": freeze_trainer.__file__,
                "FreezeTrainer_module": FreezeTrainer.__module__,
                "components_file": components.__file__,
                "my_component": my_component.describe(),
                "my_component_file": my_component.__file__,
                "pipelines_file": pipelines.__file__,
                "repo_digits_data_visible": importlib.util.find_spec("pipelines.digits_data") is not None,
                "legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
                "tf_keras": tf.keras.__name__,
                "modules": {n: m.__file__ for n, m in list(sys.modules.items()) if getattr(m, "__file__", None)},
            }, f)
    ''',
}


def test_user_repo_imports_its_own_components_and_the_installed_plugin(user_run, plugin_venv):
    report, user_repo = user_run.report, str(user_run.user_repo)
    assert report["freeze_trainer_file"] == os.path.join(plugin_venv.site_packages, "freeze_trainer", "__init__.py")
    assert report["FreezeTrainer_module"] == "freeze_trainer.tfx.component"
    assert report["components_file"] == os.path.join(user_repo, "components", "__init__.py")
    assert report["my_component_file"] == os.path.join(user_repo, "components", "my_component.py")
    assert report["my_component"] == "components.my_component of user-repo"
    assert report["pipelines_file"] == os.path.join(user_repo, "pipelines", "__init__.py")
    assert report["repo_digits_data_visible"] is False
    assert report["legacy_keras"] == "1" and report["tf_keras"].startswith("tf_keras.")
    assert not [name for name, path in report["modules"].items() if path.startswith(REPO_ROOT + os.sep)
                and not path.startswith(PROJECT_SITE_PACKAGES)]


def test_user_pipeline_pushes_a_saved_model(user_run):
    versions = sorted((user_run.output_dir / "serving").iterdir())
    assert len(versions) == 1 and versions[0].name.isdigit(), versions
    assert (versions[0] / "saved_model.pb").is_file()
    assert (versions[0] / "variables").is_dir()


def test_mlmd_model_artifact_has_a_passed_freeze_check(user_run):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(user_run.output_dir / "metadata.sqlite")
    store = metadata_store.MetadataStore(config)
    [model] = store.get_artifacts_by_type("Model")
    assert model.custom_properties["freeze_check"].string_value == "passed"
    assert json.loads(model.custom_properties["freeze_policy"].string_value)["rules"] == [{"freeze": {"base": True}}]
    assert model.custom_properties["trainable_variables"].int_value == 2  # the new head's kernel and bias
    [pushed] = store.get_artifacts_by_type("PushedModel")
    assert pushed.custom_properties["pushed"].int_value == 1


# ------------------------------------------------------------------------------- the honest dependency list


def requirement_closure(requirements: list[str]) -> tuple[set[str], set[str]]:
    """The distributions the requirements pull in, transitively, extras and environment markers applied, as
    installed here; and those required but not installed."""
    closure, missing, seen = set(), set(), set()
    queue = [Requirement(line) for line in requirements]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.add(name)
            continue
        closure.add(name)
        for line in dist.requires or []:
            child = Requirement(line)
            extras = {""} | set(requirement.extras)
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in extras):
                queue.append(child)
    return closure, missing


def file_owners(site_packages: str) -> dict[str, str]:
    owners = {}
    for dist in importlib.metadata.distributions(path=[site_packages]):
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            owners[os.path.normpath(os.path.join(site_packages, str(file)))] = name
    return owners


def test_everything_the_plugin_loads_comes_from_its_core_requirements(wheel, venv_probe, user_run, plugin_venv):
    """Each module the installed plugin loaded (every submodule imported, and a whole pipeline run) belongs
    to a distribution its core requirements pull in, transitively: no import works here only because the
    checkout's extras (kfp, pytest, hypothesis) happen to be installed."""
    _, _, metadata = wheel_metadata(wheel)
    closure, missing = requirement_closure(core_requirements(metadata))
    owners = file_owners(PROJECT_SITE_PACKAGES)
    loaded = {**venv_probe["modules"], **user_run.report["modules"]}
    outside, unowned = {}, []
    for module, path in loaded.items():
        path = os.path.normpath(path)
        if path.startswith(plugin_venv.site_packages + os.sep):
            assert module.split(".")[0] == "freeze_trainer", (module, path)
            continue
        if not path.startswith(PROJECT_SITE_PACKAGES + os.sep):
            continue  # the standard library, or the user's repository
        owner = owners.get(path)
        if owner is None:
            unowned.append(module)
        elif owner not in closure:
            outside.setdefault(owner, []).append(module)
    assert not outside, {owner: sorted(modules)[:5] for owner, modules in outside.items()}
    assert not unowned, sorted(unowned)[:20]
    assert not missing, sorted(missing)
    assert {"tensorflow", "tf-keras", "tfx", "apache-beam", "tensorflow-transform"} <= closure


# ------------------------------------------------------------------------------------------ the Keras 3 guard


def run_here(code: str, cwd) -> subprocess.CompletedProcess:
    """`code` in a fresh process of this virtualenv, without TF_USE_LEGACY_KERAS in its environment."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=300)


GUARD_MESSAGE = (
    "freeze_trainer needs tf-keras (Keras 2) as tf.keras, but this process already uses Keras 3 as tf.keras: "
    "set TF_USE_LEGACY_KERAS=1 in the environment, or import freeze_trainer before TensorFlow and TFX."
)


def test_importing_freeze_trainer_first_makes_tf_keras_legacy_keras(tmp_path):
    result = run_here(
        """
        import os
        assert "TF_USE_LEGACY_KERAS" not in os.environ
        import freeze_trainer
        import tensorflow as tf
        print("RESULT", os.environ["TF_USE_LEGACY_KERAS"], tf.keras.__name__, tf.keras.layers.Dense.__module__)
        """,
        tmp_path,
    )
    assert result.returncode == 0, tail(result)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    _, env_value, keras_name, dense_module = line.split()
    assert env_value == "1"
    assert keras_name.startswith("tf_keras."), keras_name
    assert dense_module.startswith("tf_keras."), dense_module


TENSORFLOW_FIRST = """
import tensorflow as tf
dir(tf.keras)  # Keras 3 chosen; `tf.keras` is still the lazy loader
try:
    import freeze_trainer
except ImportError as error:
    print("WHILE CHOSEN", type(error).__module__ + "." + type(error).__name__ + ":", error)
tf.keras.layers.Dense  # Keras 3 loaded; `tf.keras` is now the module keras._tf_keras.keras
"""


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(TENSORFLOW_FIRST, id="tensorflow-first"),
        # The usual TFX pipeline file imports TFX first; TFX touches tf.keras on import.
        pytest.param("from tfx.components import Transform\n", id="tfx-first"),
    ],
)
def test_freeze_trainer_after_keras_3_fails_with_one_clear_error(tmp_path, first):
    result = run_here(
        first + textwrap.dedent(
            """
            import sys
            print("KERAS", sys.modules["tensorflow"].__dict__["keras"].__name__, flush=True)
            import freeze_trainer
            print("NO ERROR")
            """
        ),
        tmp_path,
    )
    expected = f"freeze_trainer.legacy_keras.Keras3Error: {GUARD_MESSAGE}"
    if first is TENSORFLOW_FIRST:
        assert f"WHILE CHOSEN {expected}\n" in result.stdout, tail(result)
    assert "KERAS keras._tf_keras.keras\n" in result.stdout, tail(result)  # Keras 3 is tf.keras here
    assert "NO ERROR" not in result.stdout and result.returncode == 1, tail(result)
    # The last line says it all: the exception type and what to set. Nothing is chained onto it, and the
    # traceback is the import statement and the guard.
    assert result.stderr.rstrip().splitlines()[-1] == expected
    traceback = result.stderr[result.stderr.index("Traceback (most recent call last):"):]
    assert "During handling of the above exception" not in traceback
    assert "The above exception was the direct cause" not in traceback
    assert traceback.count('  File "') <= 3, traceback


def test_guard_refuses_a_legacy_keras_setting_that_disables_tf_keras(tmp_path):
    from freeze_trainer.legacy_keras import Keras3Error

    assert issubclass(Keras3Error, ImportError)  # `except ImportError` around optional imports still sees it
    result = subprocess.run(
        [sys.executable, "-c", "import freeze_trainer"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**clean_env(), "TF_USE_LEGACY_KERAS": "0"},
    )
    assert result.returncode == 1
    assert result.stderr.rstrip().splitlines()[-1] == (
        "freeze_trainer.legacy_keras.Keras3Error: freeze_trainer needs tf-keras (Keras 2): TF_USE_LEGACY_KERAS is "
        "'0'; set it to 1."
    )
