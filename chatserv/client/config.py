"""The connect form's last values, remembered in the user's config directory
(``$XDG_CONFIG_HOME/chatserv/client.json``, ``~/.config`` by default;
``%APPDATA%`` on Windows). The password is never written."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from twisted.logger import Logger

log = Logger()


@dataclass
class Settings:
    host: str = "localhost"
    port: int = 2000
    user: str = ""
    tls: bool = False
    register: bool = False
    #: PEM file of a CA (or self-signed server certificate) to trust with TLS.
    cafile: str = ""
    #: The window's last size, "WIDTHxHEIGHT".
    geometry: str = ""


def config_path() -> Path:
    if os.name == "nt" and os.environ.get("APPDATA"):
        base = Path(os.environ["APPDATA"])
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "chatserv" / "client.json"


def load_settings(path: Path | None = None) -> Settings:
    path = path or config_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as exc:
        # A broken file must not stop the client from starting.
        log.warn("Ignoring unreadable settings {path}: {exc}", path=str(path), exc=exc)
        return Settings()
    settings = Settings()
    if isinstance(data, dict):
        for f in fields(Settings):
            value = data.get(f.name)
            if isinstance(value, type(getattr(settings, f.name))):
                setattr(settings, f.name, value)
    settings.register = False  # creating an account is a one-off
    return settings


def save_settings(settings: Settings, path: Path | None = None) -> None:
    path = path or config_path()
    data = asdict(settings)
    data.pop("register", None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warn("Could not save settings to {path}: {exc}", path=str(path), exc=exc)
