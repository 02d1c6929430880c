"""recspark ingest stage."""
