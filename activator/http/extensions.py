"""The ASGI extension torpor's HTTP server offers its application, named in one place.

A server may offer, in ``scope["extensions"]``, a way to be called back when the client goes
away: ``register(callback)`` calls ``callback()`` once, at the disconnect (at once if it already
happened), unless the request ended first. torpor's own protocol (``activator.http.http1``)
does; under any other ASGI server the application falls back to a listener task on
``receive()`` (``activator.app``). The name lives here, beside the server that offers it, so the
transport never imports the application.
"""

from __future__ import annotations

DISCONNECT_EXTENSION = "torpor.disconnect_callback"
