"""The Parquet dataset: schema, shard writer, manifest and dataset card, incremental export.

Plain Python (no Prefect): `export_dataset` is what `ppcli export` and the export flow call.
"""
