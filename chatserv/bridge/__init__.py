"""The Telegram bridge (docs/TELEGRAM.md): a second service in the same
application as the chat server, joining its hub as a participant.

python-telegram-bot is imported only once a bridge starts, so the server
runs without the ``[telegram]`` extra when no bridge is configured.
"""

from .aio import ReactorMismatch, as_deferred, require_asyncio_reactor
from .config import BridgeConfig
from .service import TelegramBridge

__all__ = ["BridgeConfig", "ReactorMismatch", "TelegramBridge", "as_deferred", "require_asyncio_reactor"]
