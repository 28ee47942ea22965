"""Command-line tools; TensorFlow is imported only by the commands that build a model."""
