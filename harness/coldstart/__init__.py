"""Cold start to first token: the variants timed and their report (benchmarks/coldstart*.py)."""
