"""Fixtures for the storage tests: both engines, and real servers on a database.

Every test that takes ``db_url`` runs once on SQLite (a file in a temporary
directory) and once on PostgreSQL at 127.0.0.1:5432, in a schema of its own
that is dropped afterwards; without a reachable PostgreSQL that half skips
with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import pytest_twisted

from tests.storage.support import DurableServer

PG_ADMIN_DSN = os.environ.get("CHATSERV_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

_pg_reason: str | None = None
_pg_checked = False


def pg_unavailable() -> str | None:
    """Why PostgreSQL tests cannot run here, or None if they can."""
    global _pg_checked, _pg_reason
    if not _pg_checked:
        _pg_checked = True
        try:
            import psycopg
        except ImportError:
            _pg_reason = "psycopg is not installed (pip install 'chatserv[postgres]')"
        else:
            try:
                psycopg.connect(PG_ADMIN_DSN, connect_timeout=3).close()
            except psycopg.Error as e:
                _pg_reason = f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {str(e).strip()}"
    return _pg_reason


@contextmanager
def fresh_schema(prefix: str = "chatserv_test") -> Iterator[tuple[str, str]]:
    """A DSN whose search_path is a new schema, and the schema's name; the
    schema is dropped afterwards (if the test has not dropped it already).
    Skips the test when PostgreSQL is not there."""
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_ADMIN_DSN else "?"
    try:
        yield f"{PG_ADMIN_DSN}{sep}options=-csearch_path%3D{schema}", schema
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A DSN whose search_path is a fresh schema, dropped after the test."""
    with fresh_schema() as (url, _):
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "chat.sqlite3")
    return request.getfixturevalue("pg_schema_url")


@pytest_twisted.async_yield_fixture
async def durable(db_url, service):
    """The ``service`` fixture (tests/conftest.py) on *db_url*."""

    async def start(**options) -> DurableServer:
        return await service(db=db_url, **options)

    yield start


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor
