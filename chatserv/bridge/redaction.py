"""Keeping the bot token out of python-telegram-bot's and httpx's logs, and
those logs in Twisted's."""

from __future__ import annotations

import logging
import warnings

from ..logs import Logger
from .core import BridgeCore

log = Logger()


class _Redact(logging.Filter):
    """Keeps the bot token out of PTB's and httpx's log records (their
    request URLs contain it)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = text.replace(self.token, "<token>")
        record.args = ()
        return True


class _ToTwisted(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log.warn("{logger}: {text}", logger=record.name, text=record.getMessage())


class LogRedaction(BridgeCore):
    """The token kept out of the logs of the libraries the bridge uses."""

    def _redact(self, text: str) -> str:
        return text.replace(self.config.token, "<token>")

    def _install_log_redaction(self) -> None:
        # PTB warns about its own RetryAfter on every 429 (its int ->
        # timedelta transition); _seconds() already accepts both.
        warnings.filterwarnings("ignore", message=r".*`retry_after` will be of type")
        handler = _ToTwisted(logging.WARNING)
        handler.addFilter(_Redact(self.config.token))
        for name in ("telegram", "httpx", "httpcore"):
            logger = logging.getLogger(name)
            self._log_setup.append((logger, list(logger.handlers), logger.propagate, logger.level))
            # Their records reach the root logger (and whatever an embedding
            # program configured there) only through this redacting handler.
            logger.handlers = [handler]
            logger.propagate = False
            logger.setLevel(logging.WARNING)

    def _remove_log_redaction(self) -> None:
        for logger, handlers, propagate, level in self._log_setup:
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(level)
        self._log_setup.clear()
