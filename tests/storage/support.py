"""A real chat service on a database, built the way twistd builds it."""

from __future__ import annotations

from tests.support import TestServer

#: The one server harness (tests/support.py), here always on a database given
#: by the ``db_url`` fixture: ``DurableServer(db_url, **options)``.
DurableServer = TestServer
