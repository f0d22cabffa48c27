"""Ingestion sources; each returns a table in the canonical schema (`data.schema`)."""
