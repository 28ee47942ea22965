"""One training process for the distribution tests: a two-phase policy under a real strategy, the
head phase on cached features (each worker caches its own shard), the second on images.

    python tests/distributed_worker.py --loop fit|gradient_tape --strategy mirrored|multi_worker --output F

`mirrored` splits the CPU into two logical devices first (which must happen before TensorFlow starts);
`multi_worker` reads TF_CONFIG. Writes the freeze checks, a digest of the final weights, whether the
replicas agree and how many training examples this process cached to F as JSON.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from freeze_trainer.keras.distribution import choose_strategy, is_chief  # noqa: E402
from freeze_trainer.keras.data.example_feed import ExampleFeed  # noqa: E402
from freeze_trainer.keras.data.feature_cache import FeatureCache  # noqa: E402
from freeze_trainer.keras.training.fit_training import train_with_fit  # noqa: E402
from freeze_trainer.keras.planning.freeze_plan import plan_policy  # noqa: E402
from freeze_trainer.policy.freeze_policy import policy_from_dict  # noqa: E402
from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape  # noqa: E402
from freeze_trainer.keras.training.phase_runner import build_phase_optimizer  # noqa: E402
from tests.model_builders import classifier, random_images  # noqa: E402

POLICY = {
    "version": 1,
    "phases": [
        {"name": "head", "epochs": 1, "rules": [{"freeze": {"base": True}}]},
        {"name": "top", "epochs": 1, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"group": "block_16"}}]},
    ],
}


def replicas_agree(model) -> bool:
    for variable in model.variables:
        values = [np.asarray(v.numpy()) for v in getattr(variable, "values", (variable,))]
        if any(not np.array_equal(values[0], other) for other in values[1:]):
            return False
    return True


@click.command()
@click.option("--loop", type=click.Choice(["fit", "gradient_tape"]), required=True)
@click.option("--strategy", "kind", type=click.Choice(["mirrored", "multi_worker"]), required=True)
@click.option("--output", required=True)
def main(loop, kind, output):
    if kind == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = choose_strategy(kind)
    tf.keras.utils.set_random_seed(0)
    images, labels = random_images(64)
    examples = tf.data.Dataset.from_tensor_slices((images, labels))
    cache = FeatureCache("distributed-test", tempfile.mkdtemp(prefix="feature-cache-"))
    with strategy.scope():
        model = classifier("MobileNetV2")
        plans = plan_policy(policy_from_dict(POLICY), model, 1e-2, 1)
        optimizer = build_phase_optimizer(model, plans)
        train = train_with_fit if loop == "fit" else lambda *a, **k: train_with_gradient_tape(*a, strategy=strategy, **k)
        checks, _ = train(model, plans, ExampleFeed(examples, examples, 16, 0, cache), verbose=0, optimizer=optimizer)
    digest = hashlib.sha256(b"".join(np.asarray(v.numpy()).tobytes() for v in model.variables)).hexdigest()
    with open(output, "w") as f:
        json.dump({"replicas": strategy.num_replicas_in_sync, "checks": [c.as_dict() for c in checks],
                   "digest": digest, "replicas_agree": replicas_agree(model), "chief": is_chief(),
                   "cached_train_examples": cache.cached_examples["train"]}, f)


if __name__ == "__main__":
    main()
