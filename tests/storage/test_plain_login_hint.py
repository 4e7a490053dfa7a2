"""A plain-text guest refused for a registered name is told how to log in."""

from __future__ import annotations

import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_a_registered_name_is_refused_with_how_to_log_in(durable):
    srv = await durable()
    c = await srv.client()
    c.send_raw(b"/register Ana una clave larga\n")
    assert b"Cuenta Ana creada" in await c.line()
    c.send_raw(b"Ana: hola\n")
    line = (await c.line()).decode()
    assert line.startswith("* error auth_failed: ") and "/login NOMBRE CONTRASEÑA" in line
