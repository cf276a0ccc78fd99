"""The fault run shared by tests/faults (short) and benchmarks/faults.py (long)."""
