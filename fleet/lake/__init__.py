"""The Parquet lake: reading it and compacting it."""
