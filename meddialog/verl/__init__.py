"""verl support: its Parquet data, launching its trainers, exporting their checkpoints."""
