"""recspark recommend stage."""
