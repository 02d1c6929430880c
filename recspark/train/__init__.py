"""recspark train stage."""
