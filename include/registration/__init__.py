"""The registration phase: validate the model path, verify the artifacts, register idempotently."""
