"""recspark generate stage."""
