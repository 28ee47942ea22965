"""TFX components of the freeze-policy trainer plugin."""
