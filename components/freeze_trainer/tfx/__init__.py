"""The TFX glue: the FreezeTrainer component, its executors and default run_fn, the parameter table,
the image Transform, the serving export and warm start. Import the modules you need; this package's
own import loads nothing."""
