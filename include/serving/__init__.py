"""What the serving side imports: standard library only (no numpy, no Airflow, no MLflow)."""
