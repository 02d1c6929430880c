"""recspark embed stage."""
