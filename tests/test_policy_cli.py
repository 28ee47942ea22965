"""`freeze-policy plan|validate|schema`, and the plan text for a known policy, line by line."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import json

import pytest
from click.testing import CliRunner

from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.policy.freeze_policy import parse_policy
from freeze_trainer.keras.planning.plan_picture import DPI, picture_size
from freeze_trainer.keras.planning.plan_report import format_lr, format_plan, format_plan_groups
from freeze_trainer.cli.policy_cli import main
from freeze_trainer.tfx.trainer_config import TrainerConfig
from tests.model_builders import tiny_classifier

RUNNER = CliRunner()
SMALL = ["--image-size", "32", "--alpha", "0.35"]
# Head on a frozen base, then block_16 and top at 1e-4: the plan a README reader would run first.
TWO_PHASE = json.dumps({"version": 1, "phases": [
    {"name": "head", "rules": [{"freeze": {"base": True}}]},
    {"name": "finetune", "learning_rate": 1e-4,
     "rules": [{"freeze": {"base": True}}, {"unfreeze": {"group": "block_16"}}, {"unfreeze": {"group": "top"}}]},
]})
MOBILENET_224 = ["--backbone", "MobileNetV2", "--image-size", "224"]
FROZEN_BASE = json.dumps({"version": 1, "rules": [{"freeze": {"base": True}}]})


def test_plan_text_for_a_known_policy_line_by_line():
    policy = parse_policy('{"version": 1, "rules": [{"freeze": {"names": ["conv_a"]}}]}')
    lines = format_plan(plan_policy(policy, tiny_classifier(), default_learning_rate=0.01, default_epochs=2))
    fields = [line.split() for line in lines]
    assert lines[0] == ("phase 1/1 'train': 2 epochs, head lr 0.01; 4 of 6 layers trainable; "
                        "trainable params 19, frozen params 128; no feature cache: 1 backbone layer(s) train")
    assert fields[1] == ["#", "layer", "class", "group", "auto", "state", "bn", "lr", "trainable", "frozen"]
    assert fields[2:] == [
        ["0", "conv_a", "Conv2D", "stem", "auto_0", "frozen", "-", "-", "0", "112"],
        ["1", "bn", "BatchNormalization", "stem", "auto_1", "frozen", "frozen", "-", "0", "16"],
        ["2", "conv_b", "Conv2D", "stem", "auto_2", "trainable", "-", "0.01", "10", "0"],
        ["3", "head_pool", "GlobalAveragePooling2D", "head", "head", "trainable", "-", "-", "0", "0"],
        ["4", "head_dropout", "Dropout", "head", "head", "trainable", "-", "-", "0", "0"],
        ["5", "head_classifier", "Dense", "head", "head", "trainable", "-", "0.01", "9", "0"],
    ]


def test_plan_command_shows_recipe_phases_groups_and_decayed_rates(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nauto_groups: 2\nrecipe:\n  gradual: {factor: 2.0}\n")
    result = RUNNER.invoke(main, ["plan", str(policy), "--learning-rate", "0.01", "--layers", *SMALL])
    assert result.exit_code == 0, result.output
    summaries = [line for line in result.output.splitlines() if line.startswith("phase ")]
    assert [line.split("'")[1] for line in summaries] == ["head", "top_1_groups", "top_2_groups"]
    assert summaries[0].endswith("head trains on cached base features (5,120 bytes per example)")
    # The top half trains on the bottom half's outputs, cut inside a block (a skip crosses it); the whole
    # base trains in the last phase.
    assert summaries[1].endswith("trains on a cached frozen prefix: cuts at block_8_depthwise_relu, block_7_add "
                                 "(2,688 bytes per example)")
    assert summaries[2].endswith("; no feature cache: Conv1 trains and no base layer before it is frozen")
    rows = {fields[1]: fields for fields in (line.split() for line in result.output.splitlines()) if len(fields) == 10}
    # In the last phase the top auto group trains at lr/2 and the bottom one at lr/4.
    assert rows["block_16_project"][3:9] == ["block_16", "auto_1", "trainable", "-", "0.005", rows["block_16_project"][8]]
    assert rows["Conv1"][5:8] == ["trainable", "-", "0.0025"]


def test_plan_by_group_for_a_known_policy_line_by_line():
    policy = parse_policy(json.dumps({"version": 1, "batchnorm": "affine", "phases": [
        {"name": "warm", "rules": [{"freeze": {"names": ["conv_a"]}}]},
        {"name": "head", "epochs": 1, "learning_rate": 1e-3, "rules": [{"freeze": {"base": True}}]},
    ]}))
    lines = format_plan_groups(plan_policy(policy, tiny_classifier(), default_learning_rate=0.01, default_epochs=2))
    assert lines == [
        "phase 1/2 'warm': 2 epochs, head lr 1e-2, 5 of 6 layers trainable;",
        "  no feature cache: 2 backbone layer(s) train",
        "  group  layers  state      batchnorm  lr    trainable  frozen",
        "  stem        3  mixed      affine     1e-2         18     120",
        "  head        3  trainable  -          1e-2          9       0",
        "  total       6                                     27     120",
        "",
        "phase 2/2 'head': 1 epoch, head lr 1e-3, 3 of 6 layers trainable;",
        "  head trains on cached base features",
        "  starts with: optimizer state reset (every variable starts a fresh Adam)",
        "  group  layers  state      batchnorm  lr    trainable  frozen",
        "  stem        3  frozen     frozen     -             0     138",
        "  head        3  trainable  -          1e-3          9       0",
        "  total       6                                      9     138",
        "  changes from phase 1: stem: mixed → frozen, batchnorm affine → frozen; head: lr 1e-2 → 1e-3",
    ]


@pytest.fixture(scope="module")
def two_phase_text(tmp_path_factory):
    """The default output for the two-phase MobileNetV2 policy at 224 px, and its PNG."""
    picture = tmp_path_factory.mktemp("plan") / "plan.png"
    result = RUNNER.invoke(main, ["plan", TWO_PHASE, *MOBILENET_224, "--picture", str(picture)])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines(), picture


@pytest.fixture(scope="module")
def two_phase_json(tmp_path_factory):
    """`--format json` for the same policy, and its SVG."""
    picture = tmp_path_factory.mktemp("plan") / "plan.svg"
    result = RUNNER.invoke(main, ["plan", TWO_PHASE, *MOBILENET_224, "--format", "json", "--picture", str(picture)])
    assert result.exit_code == 0, result.output
    return result.stdout, picture


def _rows(lines):
    """Each phase's table rows (after the header row), split into fields."""
    tables, rows = [], None
    for line in lines:
        fields = line.split()
        if fields[:2] == ["group", "layers"]:
            rows = []
            tables.append(rows)
        elif rows is not None and line.startswith("  ") and not line.startswith("  changes"):
            rows.append(fields)
            if fields[0] == "total":
                rows = None
    return tables


def test_default_plan_fits_a_screen_and_names_the_defaults(two_phase_text):
    lines, _ = two_phase_text
    assert len(lines) <= 40 and max(len(line) for line in lines) <= 100, "\n".join(lines)
    defaults = TrainerConfig()
    assert lines[0] == (f"MobileNetV2 at 224 px, 10 classes; defaults for phases that set none: "
                        f"head lr {format_lr(defaults.learning_rate)}, {defaults.epochs} epochs")
    assert lines[2] == "phase 1/2 'head': 10 epochs, head lr 1e-2, 3 of 156 layers trainable;"
    assert "phase 2/2 'finetune': 10 epochs, head lr 1e-4, 10 of 156 layers trainable;" in lines


def test_default_plan_groups_alike_blocks_and_totals(two_phase_text):
    first, second = _rows(two_phase_text[0])
    assert first == [
        ["stem", "…", "top", "(18", "groups)", "153", "frozen", "frozen", "-", "0", "2,257,984"],
        ["head", "3", "trainable", "-", "1e-2", "12,810", "0"],
        ["total", "156", "12,810", "2,257,984"],
    ]
    assert second == [
        ["stem", "…", "block_15", "(16", "groups)", "142", "frozen", "frozen", "-", "0", "1,364,864"],
        ["block_16", "8", "trainable", "frozen", "1e-4", "469,440", "8,960"],
        ["top", "3", "trainable", "frozen", "1e-4", "409,600", "5,120"],
        ["head", "3", "trainable", "-", "1e-4", "12,810", "0"],
        ["total", "156", "891,850", "1,378,944"],
    ]
    for rows in (first, second):
        *groups, total = rows
        for column in (-2, -1):
            assert sum(int(row[column].replace(",", "")) for row in groups) == int(total[column].replace(",", ""))


def test_default_plan_says_what_changed_from_the_phase_before(two_phase_text):
    text = "\n".join(two_phase_text[0])
    changes = text[text.index("  changes from phase 1:"):]
    assert "block_16: frozen → trainable, lr 1e-4;" in changes
    assert "top: frozen → trainable, lr 1e-4;" in changes
    assert "head: lr 1e-2 → 1e-4" in changes
    assert "stem" not in changes and text.count("changes from phase") == 1


def test_plan_json_round_trips_with_groups_changes_and_layers(two_phase_json, two_phase_text):
    document = json.loads(two_phase_json[0])
    assert json.loads(json.dumps(document)) == document
    assert list(document) == ["backbone", "backbone_weights", "alpha", "image_size", "inputs", "num_classes", "defaults",
                              "phases"]
    assert document["image_size"] == 224 and document["inputs"] == {"features": [224, 224, 3]}
    assert document["defaults"] == {"learning_rate": TrainerConfig().learning_rate, "epochs": TrainerConfig().epochs}
    head, finetune = document["phases"]
    assert [group["name"] for group in finetune["groups"]] == [
        "stem", *(f"block_{number}" for number in range(1, 17)), "top", "head"]
    assert head["changes"] == []
    assert finetune["changes"] == [
        {"group": "block_16", "state": ["frozen", "trainable"], "batchnorm": [["frozen"], ["frozen"]],
         "learning_rates": [[], [1e-4]]},
        {"group": "top", "state": ["frozen", "trainable"], "batchnorm": [["frozen"], ["frozen"]],
         "learning_rates": [[], [1e-4]]},
        {"group": "head", "state": ["trainable", "trainable"], "batchnorm": [[], []],
         "learning_rates": [[1e-2], [1e-4]]},
    ]
    block_16 = next(group for group in finetune["groups"] if group["name"] == "block_16")
    assert block_16 == {
        "name": "block_16", "layers": [layer["name"] for layer in finetune["layers"] if layer["group"] == "block_16"],
        "state": "trainable", "batchnorm": ["frozen"], "learning_rates": [1e-4],
        "trainable_params": 469440, "frozen_params": 8960,
    }
    assert set(finetune["layers"][0]) == {"name", "class_name", "group", "auto_group", "auto_group_name", "trainable",
                                          "batchnorm", "learning_rate", "trainable_params", "frozen_params"}
    assert finetune["transition"]["optimizer_state"] == "reset"
    assert (head["caches_features"], finetune["caches_features"]) == (True, True)
    # The finetune phase trains block_16 and top: it cuts where block_16 starts, 7 x 7 x 160 floats at 224 px.
    assert (head["feature_cache_cut"], head["cached_bytes_per_example"]) == ("pooled features", 1280 * 4)
    assert (finetune["feature_cache_cut"], finetune["cached_bytes_per_example"]) == ("block_15_add", 7 * 7 * 160 * 4)
    totals = [row for rows in _rows(two_phase_text[0]) for row in rows if row[0] == "total"]
    for phase, total in zip(document["phases"], totals):
        for key in ("trainable_params", "frozen_params"):
            assert phase[key] == sum(group[key] for group in phase["groups"]) == sum(l[key] for l in phase["layers"])
        assert [f"{phase['trainable_params']:,}", f"{phase['frozen_params']:,}"] == total[-2:]


def test_plan_picture_png_decodes_at_the_figure_size(two_phase_text):
    from matplotlib.image import imread

    image = imread(two_phase_text[1])
    width, height = picture_size(2)
    assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert image.shape[1] / image.shape[0] == pytest.approx(width / height, rel=0.01)
    assert image[..., :3].std() > 0.05  # something is drawn


def test_plan_picture_svg_is_xml_naming_every_group(two_phase_json):
    document, picture = two_phase_json
    root = ElementTree.parse(picture).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {"".join(element.itertext()).strip() for element in root.iter("{http://www.w3.org/2000/svg}text")}
    groups = [group["name"] for group in json.loads(document)["phases"][0]["groups"]]
    assert set(groups) <= texts
    assert "1e-4" in texts  # the rate written into block_16's and top's segments


def test_plan_picture_needs_a_png_or_svg_name():
    result = RUNNER.invoke(main, ["plan", TWO_PHASE, "--picture", "plan.jpg"])
    assert result.exit_code == 2 and "a plan picture is a .png or .svg file" in result.output


def test_validate_accepts_and_rejects_with_the_key():
    on_backbone = ["--backbone", "MobileNetV2", *SMALL]
    ok = RUNNER.invoke(main, ["validate", '{"version": 1, "rules": [{"freeze": {"base": true}}]}', *on_backbone])
    assert ok.exit_code == 0 and "valid: 1 phase(s)" in ok.output
    bad = RUNNER.invoke(main, ["validate", '{"version": 1, "rules": [{"freeze": {"group": "block_99"}}]}', *on_backbone])
    assert bad.exit_code == 1
    assert "rules[0].freeze.group: group 'block_99' does not exist for this backbone" in bad.output
    assert "block_16" in bad.output


def test_validate_rejects_an_unknown_backbone():
    bad = RUNNER.invoke(main, ["validate", '{"version": 1, "rules": [{"freeze": {"base": true}}]}', "--backbone", "X"])
    assert bad.exit_code == 1 and "backbone: unknown backbone 'X'" in bad.output


def test_schema_command_prints_the_json_schema():
    result = RUNNER.invoke(main, ["schema"])
    assert result.exit_code == 0
    assert "recipe" in json.loads(result.output)["properties"]


def test_schema_and_validate_without_a_backbone_never_import_tensorflow(tmp_path):
    """The policy language needs pydantic and yaml only: a process that checks a policy stays light."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - freeze: {base: true}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("version: 1\nrules:\n  - freeze: {bsae: true}\n")
    probe = (
        "import sys; from click.testing import CliRunner; from freeze_trainer.cli.policy_cli import main; "
        "results = [CliRunner().invoke(main, args) for args in (['schema'], ['validate', sys.argv[1]], "
        "['validate', sys.argv[2]])]; "
        "print([r.exit_code for r in results], results[2].output.strip(), "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'tfx')))"
    )
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", probe, str(policy), str(typo)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[0, 0, 1] Error: freeze policy: rules[0].freeze.bsae: unknown key []"


def test_the_plan_of_a_non_image_base_states_its_input_shapes(tmp_path):
    import tensorflow as tf

    features = tf.keras.Input((13,), name="features")
    path = str(tmp_path / "mlp.keras")
    tf.keras.Model(features, tf.keras.layers.Dense(8, name="enc_1")(features)).save(path)
    result = RUNNER.invoke(main, ["plan", FROZEN_BASE, "--backbone", "custom", "--backbone-weights", path])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (f"custom ({path}) input features (13,), 10 classes; defaults for phases "
                                             "that set none: head lr 1e-2, 10 epochs")
    document = json.loads(RUNNER.invoke(main, ["plan", FROZEN_BASE, "--backbone", "custom", "--backbone-weights", path,
                                               "--format", "json"]).output)
    assert document["image_size"] is None and document["inputs"] == {"features": [13]}


def test_a_model_with_several_inputs_states_each_input_shape():
    import tensorflow as tf

    from freeze_trainer.keras.planning.plan_report import format_inputs, input_shapes
    from freeze_trainer.tfx.trainer_model import planning_model

    def build_model(config, contract):
        inputs = [tf.keras.Input((1,), name=name) for name in ("bill_xf", "flipper_xf")] + [
            tf.keras.Input((2, 3), name="grid_xf")]
        x = tf.keras.layers.Concatenate(name="stack")([*inputs[:2], tf.keras.layers.Flatten(name="flat")(inputs[2])])
        return tf.keras.Model(inputs, tf.keras.layers.Dense(3, name="out")(x))

    config = TrainerConfig.from_parameters(backbone="custom", head_layers="out")
    shapes = input_shapes(planning_model(config, None, 3, build_model=build_model))
    assert format_inputs(shapes) == "inputs bill_xf (1,), flipper_xf (1,), grid_xf (2, 3)"
