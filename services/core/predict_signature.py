"""The Predict signature of a Monolith entry, as servers and clients name it."""

from __future__ import annotations

# TF Serving's default SignatureDef key; an empty ``signature_name`` in a request means this one.
DEFAULT_SIGNATURE = "serving_default"

# The entry's Predict inputs, one per request kind: serialized Instances, ExampleBatches and tf.Examples.
INPUT_KINDS = ("instances", "example_batch", "examples")
