"""chatserv desktop client.

``network`` (protocol, reconnecting keeper), ``model`` and ``session`` need no
display and can serve other clients; ``ui`` holds the Tk widgets and ``app``
the ``chatserv-client`` entry point.
"""
