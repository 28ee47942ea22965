"""The demo backbone: what `pretrain_backbone` builds and saves, and the local runner's defaults. No
TensorFlow here, so that the runner's options, and its `--help`, load without it."""

from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BACKBONE_PATH = os.path.join(REPO_ROOT, "pretrained", "mobilenetv2_035_digits0to4.keras")
BACKBONE_NAME = "MobileNetV2"
ALPHA = 0.35
IMAGE_SIZE = 32


def transfer_report_path(backbone_path: str) -> str:
    return os.path.splitext(backbone_path)[0] + ".transfer.json"
