"""Support for tests and benchmarks: free ports, ``torpor up`` as a child process, load helpers.

It sits above every other package, so no program imports it (see ``docs/architecture.md``); the
wheel, and so every image, still carries it, inert.
"""
