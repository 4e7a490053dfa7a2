"""The seam between the hub and the rest of the chat: what one node shares with others.

Everything that is local to one process today goes through :class:`Cluster`:
who hands out message ids, who holds a name, who is in which room (and so
presence), and how committed messages, corrections and typing reach their
recipients. :class:`chatserv.local.LocalCluster` is today's single-node
behaviour; a cluster over a bus (issue 9: Redis as the doorbell, the database
as the truth) implements the same few methods, and calls the hub's public
entry points for events that arrive from other nodes:

* :meth:`chatserv.hub.Hub.deliver_to_room` and
  :meth:`~chatserv.hub.Hub.deliver_private`: a committed message, to this
  node's recipients;
* :meth:`~chatserv.hub.Hub.deliver_correction`: an edit or a deletion;
* :meth:`~chatserv.hub.Hub.deliver_typing`: somebody types;
* :meth:`~chatserv.hub.Hub.note_presence`: somebody entered or left a room.

Every message and correction handed to the ``publish_*`` callables is
committed and carries its stream position (``pos``, chatserv.events); a
resend of a message already committed (the same ``cid``) never reaches them.
A node that missed some reads them back in position order with
``MessageStore.events_after``.

The protocol and the bridge talk to the hub only, so neither changes when
the cluster does. The hot path pays nothing for the seam: the hub takes the
``publish_*`` callables once, and the local ones are the hub's own entry
points, so a message goes from the log's commit straight to its fan-out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred

from .events import ChatMessage, Correction, MessageIds, Typing

if TYPE_CHECKING:
    from .hub import Hub


class Cluster(Protocol):
    """What the hub needs from "the rest of the chat"; see the module docstring."""

    #: The one owner of message ids (cluster-wide in a cluster).
    ids: MessageIds

    #: Hand a committed room message to every member of its room, on every
    #: node; called by the message log, in commit order.
    publish_room: Callable[[ChatMessage], None]
    #: The same for a committed private message (its two ends).
    publish_private: Callable[[ChatMessage], None]
    #: The same for a recorded edit or deletion.
    publish_correction: Callable[[Correction], None]

    def attach(self, hub: Hub) -> None:
        """Bind to *hub*, whose public entry points receive what arrives;
        called once, by the hub, before anything else."""

    def reserve_name(self, key: str) -> Deferred[bool] | None:
        """Before a client's login: make the name whose look-alike key is
        *key* this node's, cluster-wide. None: nothing to wait for (a lone
        node decides in :meth:`claim_name`); else a Deferred firing True
        once reserved, False when held elsewhere."""

    def claim_name(self, key: str) -> bool:
        """Take the name whose look-alike key is *key* for a session of this
        node, synchronously at login (after :meth:`reserve_name` for a
        client); False when it is held already."""

    def release_name(self, key: str) -> None:
        """The session that held *key* here has gone."""

    def membership(self, room: str, joined: str | None = None, left: str | None = None) -> None:
        """The user *joined* entered, or *left* left, *room* on this node:
        tell every node, whose members hear of it in their presence windows."""

    def elsewhere(self, room_key: str) -> dict[str, str]:
        """The members of the room whose key is *room_key* on other nodes
        (name key -> name): a dict the cluster keeps current, which the
        hub's room holds on to (so the same dict for the room's whole life)."""

    def where(self, key: str) -> str | None:
        """The name as shown of the user whose name key is *key* if it is
        online on another node; None otherwise (always, on a lone node)."""

    def rooms_elsewhere(self) -> dict[str, tuple[str, int]]:
        """The rooms with members on other nodes: room key -> (name as
        shown, how many members they have there); empty on a lone node."""

    def publish_typing(self, typing: Typing, key: str) -> None:
        """Hand *typing* to the others of the room whose key is *key* (or to
        the user whose name key is *key*, for private typing)."""

    def health_problems(self) -> list[str]:
        """What keeps this node from serving the whole chat now, one short
        phrase each ("not connected to Redis", "heartbeat 12 s old"); empty
        when nothing does. ``--health`` answers 503 with them (chatserv.health)."""
