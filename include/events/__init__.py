"""Source data: the DDL the project owns (DESIGN §4) and a seeded generator for demo/tests/benchmarks."""
