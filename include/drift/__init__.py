"""Dataset drift: each dataset version against the previous one, by population stability index (PSI) of the main
inputs (`profile.py` bins them batch-wise from the published Parquet files, `psi.py` compares binned counts,
`compare.py` applies `thresholds.json`, `tracking.py` logs the report into the dataset's MLflow run)."""
