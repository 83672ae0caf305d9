"""Source data: the DDL the project owns (docs/contracts.md, source schema) and a seeded generator
for demo/tests/benchmarks."""
