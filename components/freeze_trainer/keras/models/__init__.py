"""Model building: pretrained bases, the classifier head, the task's loss and metrics, and safe model files."""
