"""chatserv-admin on the database a running server uses."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from chatserv import admin
from chatserv.registered import FRESH
from chatserv.storage import LATEST, open_engine
from tests.support import sleep


def run(db_url: str, *args: str, stdin: str = "", capsys=None) -> tuple[int, str, str]:
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = admin.main(["--db", db_url, *args])
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def test_accounts_lifecycle(db_url, capsys):
    code, out, _ = run(db_url, "create", "Ana", "--password-stdin", stdin="secreto123\n", capsys=capsys)
    assert code == 0 and "Ana" in out
    code, _, err = run(db_url, "create", "ana", "--password-stdin", stdin="secreto123\n", capsys=capsys)
    assert code == 1 and "ya tiene una cuenta" in err
    code, _, err = run(db_url, "create", "Luis", "--password-stdin", stdin="corta\n", capsys=capsys)
    assert code == 1 and "8" in err
    code, _, err = run(db_url, "create", "mal nombre", "--password-stdin", stdin="12345678\n", capsys=capsys)
    assert code == 1 and "nombre" in err
    code, out, _ = run(db_url, "list-accounts", capsys=capsys)
    assert code == 0 and out.split("\t")[0] == "Ana"
    engine = open_engine(db_url)
    first_hash = engine.account("Ana").password_hash
    engine.close()
    code, _, _ = run(db_url, "reset-password", "ANA", "--password-stdin", stdin="otra clave\n", capsys=capsys)
    assert code == 0
    engine = open_engine(db_url)
    account = engine.account("Ana")
    engine.close()
    assert account.password_hash != first_hash and account.password_hash.startswith("$argon2id$")
    code, _, _ = run(db_url, "reset-password", "Nadie", "--password-stdin", stdin="12345678\n", capsys=capsys)
    assert code == 1
    code, _, _ = run(db_url, "delete", "ana", capsys=capsys)
    assert code == 0
    code, _, err = run(db_url, "delete", "ana", capsys=capsys)
    assert code == 1 and "no tiene cuenta" in err
    code, out, _ = run(db_url, "migrate", capsys=capsys)
    assert code == 0 and str(LATEST) in out


def test_unusable_database_is_one_line(tmp_path, capsys):
    code, _, err = run("postgresql://nadie@127.0.0.1:1/x?connect_timeout=2", "list-rooms", capsys=capsys)
    assert code == 1 and err.startswith("chatserv-admin: cannot connect") and "Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_admin_works_beside_a_running_server(durable, db_url, capsys):
    srv = await durable()
    ana = await srv.client()
    await ana.login("Ana")
    ana.send(cmd="join", room="Cine")
    await ana.expect("history", room="Cine")
    ana.send(cmd="broadcast", room="Cine", msg="hola")
    await ana.expect("broadcast")
    ana.send(cmd="broadcast", msg="hola")
    await ana.expect("broadcast", room="general")
    code, out, _ = run(db_url, "list-rooms", capsys=capsys)
    assert code == 0
    rooms = {line.split("\t")[0]: line for line in out.splitlines()}
    assert set(rooms) == {"Cine", "general"} and "1 mensajes" in rooms["Cine"]
    # An account created by the operator is known to the running server
    # within chatserv.registered.FRESH seconds (a guest may slip in before).
    guest = await srv.client()
    guest.send(cmd="login", user="Temprano")
    assert (await guest.frame())["cmd"] == "history"  # the registered names are loaded now
    guest.close()
    code, _, _ = run(db_url, "create", "Luis", "--password-stdin", stdin="secreto123\n", capsys=capsys)
    assert code == 0
    await sleep(FRESH + 0.2)
    guest = await srv.client()
    guest.send(cmd="login", user="Luis")
    assert (await guest.frame())["code"] == "auth_failed"
    guest.send(cmd="login", user="Luis", password="secreto123")
    assert (await guest.frame())["cmd"] == "history"


@pytest.mark.slow
def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).with_name("chatserv-admin")
    if not script.exists():
        pytest.skip("chatserv-admin is not installed in this environment (pip install -e .)")
    db = tmp_path / "chat.sqlite3"
    result = subprocess.run(
        [str(script), "--db", str(db), "create", "Ana", "--password-stdin"],
        input="secreto123\n", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [str(script), "--db", str(db), "list-accounts"], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.startswith("Ana\t")
