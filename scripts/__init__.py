"""Developer entry points behind the Makefile (not part of the DAG package)."""
