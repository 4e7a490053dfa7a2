# The twistd dropin. It stays this small on purpose: twistd imports every
# plugin module to list them, so nothing here may import a reactor or the
# server; ServiceMaker loads chatserv.tap only when the plugin is used.
from twisted.application.service import ServiceMaker

chatserv = ServiceMaker(
    "chatserv",
    "chatserv.tap",
    "Chat server: JSON lines and plain text on one port (docs/PROTOCOL.md).",
    "chatserv",
)
