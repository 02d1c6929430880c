"""recspark evaluate stage."""
