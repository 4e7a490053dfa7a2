"""``chatserv-admin``: operator commands on the server's database.

Works on the same ``--db`` as ``twistd chatserv`` (a SQLite file or a
``postgresql://`` DSN), with the server running or not::

    chatserv-admin --db chatserv.sqlite3 create ana          # asks for the password
    echo 'secreto123' | chatserv-admin create ana --password-stdin
    chatserv-admin reset-password ana
    chatserv-admin delete ana
    chatserv-admin list-accounts
    chatserv-admin list-rooms
    chatserv-admin set-room-cap cine 1000     # keep the newest 1,000 messages of cine
    chatserv-admin set-room-cap cine 0        # no cap

Exit status: 0 done, 1 refused (name taken, no such account, bad password,
unusable database), 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from datetime import datetime

from .accounts import MAX_PASSWORD, MIN_PASSWORD
from .names import BadName, check_name
from .storage import DEFAULT_DB, Engine, StorageError, open_engine, redact


class Refused(Exception):
    """The command cannot be done; the message says why."""


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Contraseña: ")
        if getpass.getpass("Repite la contraseña: ") != password:
            raise Refused("las contraseñas no coinciden")
    if len(password) < MIN_PASSWORD:
        raise Refused(f"la contraseña debe tener al menos {MIN_PASSWORD} caracteres")
    if len(password) > MAX_PASSWORD:
        raise Refused(f"la contraseña no puede tener más de {MAX_PASSWORD} caracteres")
    return password


def _hash(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def _name(raw: str) -> str:
    try:
        return check_name(raw)
    except BadName as e:
        raise Refused(f"nombre no válido: {e}") from None


def _create(engine: Engine, args: argparse.Namespace) -> str:
    name = _name(args.name)
    if engine.account(name) is not None:
        raise Refused(f"{name} ya tiene una cuenta")
    if not engine.create_account(name, _hash(_password(args)), time.time()):
        raise Refused(f"{name} ya tiene una cuenta")
    return f"cuenta {name} creada"


def _delete(engine: Engine, args: argparse.Namespace) -> str:
    if not engine.delete_account(args.name):
        raise Refused(f"{args.name} no tiene cuenta")
    return f"cuenta {args.name} borrada"


def _reset(engine: Engine, args: argparse.Namespace) -> str:
    account = engine.account(args.name)
    if account is None:
        raise Refused(f"{args.name} no tiene cuenta")
    if not engine.set_password(account.name, _hash(_password(args))):
        raise Refused(f"{args.name} no tiene cuenta")
    return f"contraseña de {account.name} cambiada"


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _list_accounts(engine: Engine, args: argparse.Namespace) -> str:
    rows = [f"{a.name}\t{_stamp(a.created)}" for a in engine.accounts()]
    return "\n".join(rows) if rows else "(sin cuentas)"


def _list_rooms(engine: Engine, args: argparse.Namespace) -> str:
    caps = {room: cap for _key, room, cap in engine.room_caps()}
    rows = [
        f"{r.name}\t{r.messages} mensajes\túltimo {_stamp(r.last_ts)}"
        + (f"\tmáximo {caps.pop(r.name)}" if r.name in caps else "")
        for r in engine.rooms()
    ]
    rows += [f"{room}\t0 mensajes\tmáximo {cap}" for room, cap in caps.items()]
    return "\n".join(rows) if rows else "(sin salas con mensajes)"


def _set_room_cap(engine: Engine, args: argparse.Namespace) -> str:
    room = _name(args.room)
    if args.max_messages < 0:
        raise Refused("el máximo no puede ser negativo")
    engine.set_room_cap(room, args.max_messages)
    if args.max_messages == 0:
        return f"la sala {room} ya no tiene máximo"
    # The server enforces it at its next retention run (every 10 minutes).
    return f"la sala {room} guardará como mucho sus {args.max_messages} mensajes más recientes"


def _migrate(engine: Engine, args: argparse.Namespace) -> str:
    return f"esquema en la versión {engine.version()}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatserv-admin", description="Manage chatserv accounts and rooms.")
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        help=f"SQLite file or postgresql:// DSN, as given to twistd chatserv (default {DEFAULT_DB})",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command, handler, text in (
        ("create", _create, "create an account"),
        ("reset-password", _reset, "set a new password"),
    ):
        s = sub.add_parser(command, help=text)
        s.add_argument("name")
        s.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        s.set_defaults(handler=handler)
    s = sub.add_parser("delete", help="delete an account (its messages stay)")
    s.add_argument("name")
    s.set_defaults(handler=_delete)
    sub.add_parser("list-accounts", help="list accounts").set_defaults(handler=_list_accounts)
    sub.add_parser("list-rooms", help="list rooms with stored messages").set_defaults(handler=_list_rooms)
    s = sub.add_parser("set-room-cap", help="keep only the newest N messages of a room (0: no cap)")
    s.add_argument("room")
    s.add_argument("max_messages", type=int, metavar="N")
    s.set_defaults(handler=_set_room_cap)
    sub.add_parser("migrate", help="bring the schema up to date").set_defaults(handler=_migrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        engine = open_engine(args.db)
    except StorageError as e:
        print(f"chatserv-admin: {e}", file=sys.stderr)
        return 1
    try:
        engine.migrate()
        print(args.handler(engine, args))
        return 0
    except (Refused, StorageError) as e:
        print(f"chatserv-admin: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a database error: one line, not a traceback
        print(f"chatserv-admin: {redact(args.db)}: {e}", file=sys.stderr)
        return 1
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
