"""The dataset phase: window -> extraction (pushed down to PostgreSQL) -> validation -> publish."""
