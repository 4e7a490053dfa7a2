"""chatserv: a real-time chat server on Twisted, with a desktop client and a Telegram bridge."""

__version__ = "0.1.0"
