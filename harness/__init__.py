"""Support for tests and benchmarks: free ports, ``torpor up`` as a child process, load helpers.

Not part of what ships to users; it sits above every other package (see ``docs/architecture.md``).
"""
