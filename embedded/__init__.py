"""The embedded platform's composition root: ``torpor up``, the CLI, the control API and demo.

It wires the three programs (activator, autoscaler, runtime) together in one process over the
in-process bus; nothing below it imports it (``docs/architecture.md``).
"""
