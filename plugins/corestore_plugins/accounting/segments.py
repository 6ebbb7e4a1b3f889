"""How queued rows are kept: segments of the accounting queue, and the batches cut from them.

**Why not an object per row.** A row queued as its own object (a copied dict, a tuple) costs
three times over, all of it on the one interpreter lock the producer and the writer share:

* an allocation the cyclic garbage collector counts: a young collection every 700 queued
  rows, and a backlog promoted to older generations;
* the writer's Python per row to turn it back into statement parameters: checking that the
  batch's rows have the same keys, then flattening their values (about 250 ns a row);
* the row's deallocation on the writer's thread, in memory the producer's core just wrote.

Measured end to end (30,000 rows, ``site/performance.md``) that was about a fifth of the run.

**Segments.** The queue is a run of segments, oldest first:

* a *flat* segment holds rows of one named table that carry the same keys (a :class:`Shape`):
  ``submit()`` takes each row's values out in the shape's key order (one ``itemgetter`` call,
  in C) and appends them to one flat list, and the submit times to another. The writer's
  statement parameters are slices of that list: no Python per row on either side;
* a *mixed* segment holds any other row as ``submit()`` always did: the table or model, a copy
  of the row, the submit time. A model's rows go here (their fields' defaults and
  ``db_value`` conversions are the writer's), as do rows with fewer than two keys and rows
  whose shape changes every few rows (:meth:`Segment.open_flat_after`: a new segment per row
  would cost more than it saves).

A row's place in the queue is its place in the run, so rows keep their acceptance order and
numbering (``seq``) whatever segment they are in.

**Batches.** The writer takes a :class:`Batch`: the parts it cut from the head segments. Its
rows as dicts (``Batch.rows``: to isolate a refused row, to dead-letter, at close) are rebuilt
only when asked for, with the keys in the shape's order.
"""
from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = ["Item", "Shape", "Segment", "Part", "Batch", "EMPTY", "FLAT_RUN", "MIXED_RUN"]

#: A queued row: ``(table_or_model, row, submitted_at, seq)``.
Item = tuple[Any, dict[str, Any], float, int]

#: A flat segment that ends with fewer rows than this when a row of another shape arrives is
#: followed by a mixed segment, not a new flat one (shapes alternating row by row).
FLAT_RUN = 16
#: A mixed segment takes this many rows before a flat one may follow it again.
MIXED_RUN = 64
#: Rows cut from a segment's head before its lists are compacted (when that is half of them).
_COMPACT_AT = 1024


class Shape:
    """A named table and the keys its rows carry, in the order their values are kept."""

    __slots__ = ("table", "keys", "width", "get")

    def __init__(self, table: str, keys: tuple[str, ...]) -> None:
        if len(keys) < 2:
            raise ValueError("a flat shape has at least two keys (itemgetter of one key returns no tuple)")
        self.table = table
        self.keys = keys
        self.width = len(keys)
        #: a row's values in ``keys`` order, as a tuple (KeyError: not this shape)
        self.get = operator.itemgetter(*keys)


class Part:
    """Rows cut from one segment: ``shape`` (None: mixed), ``tables`` (mixed only), ``values``
    (flat: the values, ``shape.width`` per row; mixed: the row dicts), ``times`` and ``first``
    (the ``seq`` of its first row)."""

    __slots__ = ("shape", "tables", "values", "times", "first")

    def __init__(self, shape: Shape | None, tables: list[Any] | None, values: list[Any], times: list[float],
                 first: int) -> None:
        self.shape = shape
        self.tables = tables
        self.values = values
        self.times = times
        self.first = first

    def __len__(self) -> int:
        return len(self.times)

    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts (a flat part's rebuilt from its values)."""
        shape = self.shape
        if shape is None:
            return self.values
        it = iter(self.values)
        return list(map(dict, map(zip, itertools.repeat(shape.keys), zip(*[it] * shape.width, strict=True))))

    def table_list(self) -> list[Any]:
        if self.shape is None:
            assert self.tables is not None
            return self.tables
        return [self.shape.table] * len(self.times)


class Segment:
    """A run of queued rows of one kind (see the module docs); ``start`` rows at its head are
    already gone (taken or dropped) and are compacted away in bulk. ``width``: entries of
    ``values`` per row (the shape's keys; 1, the dict, in a mixed segment)."""

    __slots__ = ("shape", "width", "tables", "values", "times", "start")

    def __init__(self, shape: Shape | None) -> None:
        self.shape = shape
        self.width = shape.width if shape is not None else 1
        self._empty()

    def _empty(self) -> None:
        self.tables: list[Any] | None = None if self.shape is not None else []
        self.values: list[Any] = []
        self.times: list[float] = []
        self.start = 0

    def __len__(self) -> int:
        return len(self.times) - self.start

    def open_flat_after(self) -> bool:
        """May a flat segment of another shape follow this one (the tail)? Not right after a
        short flat run or inside a short mixed one: shapes that alternate stay mixed."""
        return len(self) >= (MIXED_RUN if self.shape is None else FLAT_RUN)

    def cut(self, n: int, first: int) -> Part:
        """The first ``n`` rows (``n <= len(self)``), removed; ``first`` is the first one's ``seq``."""
        s = self.start
        e = s + n
        times = self.times
        if s == 0 and e == len(times):  # all of it: hand the lists over, keep the segment (it may be the tail)
            part = Part(self.shape, self.tables, self.values, times, first)
            self._empty()
            return part
        w = self.width
        tables = self.tables[s:e] if self.tables is not None else None
        part = Part(self.shape, tables, self.values[s * w:e * w], times[s:e], first)
        self.start = e
        self._compact()
        return part

    def drop_first(self) -> None:
        """Forget the first row (``on_full = "drop_oldest"``)."""
        self.start += 1
        self._compact()

    def _compact(self) -> None:
        s = self.start
        if s < _COMPACT_AT or s * 2 < len(self.times):
            return
        del self.values[:s * self.width]
        del self.times[:s]
        if self.tables is not None:
            del self.tables[:s]
        self.start = 0


class Batch:
    """Rows taken together (see the module docs). ``times`` and ``seqs`` are always there;
    ``tables`` and ``rows`` are built on first use for a batch cut from segments. Iterating it,
    or indexing it, gives :data:`Item` tuples, built on demand; ``len()`` and truth are its
    row count. ``parts``: the segments' parts it was cut from (None once its rows are lists)."""

    __slots__ = ("parts", "_tables", "_rows", "times", "seqs")

    def __init__(self, tables: Sequence[Any], rows: Sequence[dict[str, Any]], times: Sequence[float],
                 seqs: Sequence[int]) -> None:
        self.parts: list[Part] | None = None
        self._tables: Sequence[Any] | None = tables
        self._rows: Sequence[dict[str, Any]] | None = rows
        self.times = times
        self.seqs = seqs

    @classmethod
    def cut(cls, parts: list[Part]) -> Batch:
        """A batch of ``parts`` (cut from the queue's head, in order, or one shape's parts of one
        batch): its times joined, its seqs those of the parts."""
        if len(parts) == 1:
            times: Sequence[float] = parts[0].times
        else:
            times = list(itertools.chain.from_iterable(p.times for p in parts))
        seqs: Sequence[int]
        if not parts:
            seqs = range(0)
        elif all(a.first + len(a) == b.first for a, b in itertools.pairwise(parts)):
            seqs = range(parts[0].first, parts[0].first + len(times))
        else:
            seqs = list(itertools.chain.from_iterable(range(p.first, p.first + len(p)) for p in parts))
        batch = cls((), (), times, seqs)
        batch.parts = parts
        batch._tables = batch._rows = None
        return batch

    @classmethod
    def of(cls, items: Iterable[Item]) -> Batch:
        """A batch of ``items`` (tuples), e.g. one row retried alone."""
        items = list(items)
        return cls([i[0] for i in items], [i[1] for i in items], [i[2] for i in items], [i[3] for i in items])

    def _build(self) -> None:
        parts = self.parts or []
        if len(parts) == 1:
            self._tables, self._rows = parts[0].table_list(), parts[0].rows()
        else:
            self._tables = list(itertools.chain.from_iterable(p.table_list() for p in parts))
            self._rows = list(itertools.chain.from_iterable(p.rows() for p in parts))

    @property
    def tables(self) -> Sequence[Any]:
        if self._tables is None:
            self._build()
        assert self._tables is not None
        return self._tables

    @property
    def rows(self) -> Sequence[dict[str, Any]]:
        if self._rows is None:
            self._build()
        assert self._rows is not None
        return self._rows

    def flat_parts(self) -> list[Part] | None:
        """Its parts if every one is flat (the writer's fast path), else None."""
        parts = self.parts
        if parts and all(p.shape is not None for p in parts):
            return parts
        return None

    def __len__(self) -> int:
        return len(self.times)

    def __iter__(self) -> Iterator[Item]:
        return zip(self.tables, self.rows, self.times, self.seqs, strict=True)

    def __getitem__(self, i: int) -> Item:
        return (self.tables[i], self.rows[i], self.times[i], self.seqs[i])

    def pick(self, indices: Sequence[int]) -> Batch:
        """The rows at ``indices`` (one group of a mixed batch), in that order."""
        t, r, ts, sq = self.tables, self.rows, self.times, self.seqs
        return Batch([t[i] for i in indices], [r[i] for i in indices], [ts[i] for i in indices],
                     [sq[i] for i in indices])

    def drop_head(self) -> None:
        """Forget the first row (settled alone, in row-per-transaction mode)."""
        tables, rows = self.tables, self.rows
        self.parts = None
        self._tables, self._rows = tables[1:], rows[1:]
        self.times, self.seqs = self.times[1:], self.seqs[1:]


#: A batch of no rows (the writer's probe during a fault episode).
EMPTY = Batch((), (), (), ())
