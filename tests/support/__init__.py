"""Test harness: fault injection and a throw-away standalone cluster.

Used by tests and benchmarks only; not shipped in the wheel.
"""
