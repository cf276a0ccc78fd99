"""The activator's own HTTP stack, apart from the application it serves.

``http1`` is the per-connection HTTP/1.1 server protocol, ``server`` the uvicorn settings that
run it, ``workers`` several activator processes on one port, ``upstream`` the pooled client
that talks to replicas, and ``extensions`` the ASGI extension the server offers. Nothing here
imports the application (``activator.app`` and what it wires: routing, auth, the wait queue,
the proxy); errors come typed from ``activator.errors``, which imports nothing of either side.
An import-linter contract in pyproject.toml keeps it so.
"""
