"""The outbound side's pure parts: the pacer that keeps us inside Telegram's
limits, and the bounded queue that coalesces chat lines into Telegram messages.

Both take time as an argument, so they are tested without a reactor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .format import render_line, split_text, utf16_len


class Pacer:
    """At most *count* sends in any *period* seconds, and no more than *burst*
    of them back to back.

    The sliding window is Telegram's hard limit. The token bucket on top
    (capacity *burst*, refilled at count/period per second) spreads a busy
    spell evenly: without it a chat burst would spend the whole minute's
    allowance in a second and then stall for the rest of the minute, while
    lines pile up unsent.
    """

    def __init__(self, count: int, period: float, burst: int | None = None) -> None:
        self.count = count
        self.period = period
        self.burst = count if burst is None else max(1, min(burst, count))
        self.rate = count / period
        self.sent: deque[float] = deque(maxlen=count)
        self.tokens = float(self.burst)
        self.stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def delay(self, now: float) -> float:
        """Seconds until one more send is allowed (0 if it is allowed now)."""
        self._refill(now)
        wait = 0.0
        if len(self.sent) >= self.count:
            wait = self.sent[0] + self.period - now
        if self.tokens < 1:
            wait = max(wait, (1 - self.tokens) / self.rate)
        return max(0.0, wait)

    def record(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1
        self.sent.append(now)


@dataclass(slots=True)
class Entry:
    """One line bound for Telegram: a piece of a chat message, or a notice (no sender)."""

    seq: int
    chat_id: int | None
    sender: str | None
    text: str
    #: The Telegram message this line answers (a chat reply to a bridged
    #: message): it goes out as a Telegram reply, in a message of its own.
    reply_tg: int | None = None
    html: str = field(init=False)

    def __post_init__(self) -> None:
        self.html = render_line(self.sender, self.text)


def dropped_notice(count: int) -> str:
    return render_line(None, f"[{count} mensajes del chat no han llegado a Telegram: cola llena]")


@dataclass(slots=True)
class Batch:
    entries: list[Entry]
    html: str
    announced: int
    reply_tg: int | None = None


class Outbox:
    """Lines waiting for Telegram, oldest first, at most *max_entries* of them.

    At the bound the oldest lines are dropped (a busy room's latest lines
    matter most once Telegram is back), counted, and the next message sent
    says how many were lost. Callers log and persist what :meth:`add`
    reports.
    """

    def __init__(
        self, max_entries: int, max_length: int, first_seq: int = 1, seqs: Iterator[int] | None = None
    ) -> None:
        self.max_entries = max_entries
        self.max_length = max_length
        self.entries: deque[Entry] = deque()
        self.dropped = 0
        self._next_seq = first_seq
        #: Shared by the outboxes of several groups, whose lines are stored
        #: in one table keyed by seq.
        self._seqs = seqs

    def __len__(self) -> int:
        return len(self.entries)

    def add(
        self, chat_id: int | None, sender: str | None, text: str, reply_tg: int | None = None
    ) -> tuple[list[Entry], list[Entry]]:
        """Queue a chat message (split to fit Telegram); return (added, dropped)."""
        added: list[Entry] = []
        for piece in split_text(sender, text, self.max_length - utf16_len(dropped_notice(10**9)) - 1):
            if self._seqs is not None:
                seq = next(self._seqs)
            else:
                seq = self._next_seq
                self._next_seq += 1
            added.append(Entry(seq, chat_id, sender, piece, reply_tg if not added else None))
        return added, self._append(added)

    def replace(
        self, chat_id: int, sender: str | None, text: str | None
    ) -> tuple[list[Entry], list[Entry]] | None:
        """A correction of chat message *chat_id* while it still waits here:
        change its line (or, with *text* None, drop it) in place and return
        ``(removed, added)`` entries for the caller to persist; None when it
        is not queued as one line (not queued, sent already, or split)."""
        found = [e for e in self.entries if e.chat_id == chat_id]
        if len(found) != 1:
            return None
        old = found[0]
        if text is None:
            self.entries.remove(old)
            return [old], []
        new = Entry(old.seq, chat_id, sender, text, old.reply_tg)
        if utf16_len(new.html) > self.max_length - utf16_len(dropped_notice(10**9)) - 1:
            return None
        self.entries[self.entries.index(old)] = new
        return [], [new]

    def restore(self, entries: Iterable[Entry]) -> list[Entry]:
        """Put back entries loaded from disk (oldest first); return what did not fit."""
        entries = list(entries)
        for entry in entries:
            self._next_seq = max(self._next_seq, entry.seq + 1)
        return self._append(entries, front=True)

    def _append(self, new: list[Entry], front: bool = False) -> list[Entry]:
        if front:
            self.entries.extendleft(reversed(new))
        else:
            self.entries.extend(new)
        dropped = []
        while len(self.entries) > self.max_entries:
            dropped.append(self.entries.popleft())
        self.dropped += len(dropped)
        return dropped

    def batch(self) -> Batch | None:
        """The longest run of lines from the head that fits in one Telegram message."""
        if not self.entries and not self.dropped:
            return None
        lines = []
        size = 0
        announced = self.dropped
        if announced:
            lines.append(dropped_notice(announced))
            size = utf16_len(lines[0])
        taken: list[Entry] = []
        for entry in self.entries:
            if entry.reply_tg is not None and taken:
                break  # a reply goes out as a Telegram message of its own
            cost = utf16_len(entry.html) + (1 if lines else 0)
            if size + cost > self.max_length:
                break
            lines.append(entry.html)
            taken.append(entry)
            size += cost
            if entry.reply_tg is not None:
                break
        reply_tg = taken[0].reply_tg if taken else None
        return Batch(taken, "\n".join(lines), announced, reply_tg)

    def done(self, batch: Batch) -> None:
        """*batch* reached Telegram: forget its lines."""
        for entry in batch.entries:
            # Only the head can have been sent; anything else means the queue
            # was trimmed meanwhile, and that entry is already gone.
            if self.entries and self.entries[0] is entry:
                self.entries.popleft()
        self.dropped = max(0, self.dropped - batch.announced)
