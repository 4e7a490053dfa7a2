"""The two languages a connection may speak, chosen by its first line.

A :class:`~chatserv.dialects.base.Dialect` reads a connection's lines and
renders the hub's events for it: it is the hub's participant for the
connection's session. :mod:`.jsonlines` speaks JSON frames (seed-000 clients,
the Tk client, the benchmarks); :mod:`.plain` speaks ``name: text`` lines
(seed-004 clients, ``nc``). :mod:`.paging` answers the JSON ``history``
command and loads room windows from storage for ``join``.
"""
