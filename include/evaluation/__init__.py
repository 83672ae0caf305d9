"""The offline evaluation phase (groundwork: the metric functions)."""
