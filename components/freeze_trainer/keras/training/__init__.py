"""Training: the phase runner, both loops (Keras `fit` and the `tf.GradientTape` step), the per-layer-rate
optimizer, checkpoints, restore-best, progress and curves, and the proof that frozen weights did not move."""
