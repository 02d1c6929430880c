"""recspark: a distributed, offline recommendation pipeline on Apache Spark."""

__version__ = "0.1.0"
