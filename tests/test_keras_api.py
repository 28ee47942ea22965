"""The Keras layer's public API, used as a plain Keras script would: its docstring example runs as written."""

import doctest

import freeze_trainer.keras


def test_the_keras_layer_docstring_example_runs():
    result = doctest.testmod(freeze_trainer.keras, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0
