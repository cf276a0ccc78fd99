"""The activator overhead benchmark's parts (benchmarks/activator_overhead.py runs them)."""
