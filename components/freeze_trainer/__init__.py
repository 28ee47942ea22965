"""FreezeTrainer: fine-tune pretrained keras.applications backbones in TFX under a freeze policy."""
