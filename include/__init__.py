"""The planner lifecycle library: one sub-package per phase plus a shared core."""
