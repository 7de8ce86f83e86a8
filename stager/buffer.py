"""Per task type buffers of cleaned rows, and the in-file deduplication."""

import threading

import pyarrow as pa
import pyarrow.compute as pc

from .clean import concat_staged


class Buffer:
    """Cleaned rows of one task type waiting to be sealed, with the tasks they came from.

    A buffer holds whole tasks: a task's rows are sealed together, so a task
    is acknowledged by exactly one seal. A file therefore reaches its size
    and may pass it by less than one task.

    Its size adapts to the queue (``backlog``: rows in each of the last two
    leases, both full; stager.claims). Quiet, a file is sealed at
    ``batch_size`` rows, as soon as it holds them. Under a backlog of at least
    ``batch_size`` rows it grows to ``batch_max_rows``: the rows are there
    already, so a larger file costs them no waiting, and the loader's cost is
    per file. When the backlog ends, whatever holds ``batch_size`` rows is
    sealed at once. ``batch_bytes`` and ``batch_timeout`` bound every file alike.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.lock = threading.RLock()  # held while sealing: appenders wait (back-pressure)
        self._reset()

    def _reset(self):
        self.tables = []
        self.tokens = []
        self.task_ids = set()
        self.rows = 0
        self.nbytes = 0
        self.opened_at = None  # clock() of the first row

    def append(self, table, tokens, task_ids, now):
        """Add the rows of whole tasks, with the claims to acknowledge when they are sealed."""
        with self.lock:
            if self.opened_at is None:
                self.opened_at = now
            self.tables.append(table)
            self.tokens.extend(tokens)
            self.task_ids.update(t for t in task_ids if t)
            self.rows += table.num_rows
            self.nbytes += table.nbytes

    def due(self, settings, now, backlog=0):
        """Why this buffer should be sealed now ('rows', 'bytes', 'age'), or None."""
        if not self.rows:
            return None
        return self.full(settings, backlog) or (
            "age" if now - self.opened_at >= settings.batch_timeout else None)

    def full(self, settings, backlog=0):
        """'rows' or 'bytes' when this buffer holds a file's worth, else None (the sizes: class docstring)."""
        if not self.rows:
            return None
        grow = backlog >= settings.batch_size
        if self.rows >= (max(settings.batch_size, settings.batch_max_rows) if grow else settings.batch_size):
            return "rows"
        if self.nbytes >= settings.batch_bytes:
            return "bytes"
        return None

    def age(self, now):
        return 0.0 if self.opened_at is None else now - self.opened_at

    def take(self):
        """Hand over the contents and empty the buffer: (table, tokens, task_ids).

        Tasks may differ in their undeclared columns: concat_staged unifies them.
        """
        with self.lock:
            table = concat_staged(self.tables) if self.tables else None
            out = table, self.tokens, self.task_ids
            self._reset()
            return out

    def put_back(self, table, tokens, task_ids, opened_at):
        """Return contents that could not be sealed, ahead of anything newer."""
        with self.lock:
            newer = (self.tables, self.tokens, self.task_ids, self.rows, self.nbytes)
            self._reset()
            self.append(table, [], [], opened_at)
            self.tokens = list(tokens) + newer[1]
            self.task_ids = set(task_ids) | newer[2]
            self.tables += newer[0]
            self.rows += newer[3]
            self.nbytes += newer[4]


def dedup(table, dataset):
    """Keep one row per primary key: the newest by the version order, then the last appended.

    A dataset with history keeps one row per distinct version instead (same key,
    declared columns and ``_valid_from``): its history needs every version a
    fetch returned, and a restated report comes with its original. The loader
    keeps the newest per key in the current table. NULLs compare equal here.
    Returns (table, superseded rows). Order of the kept rows is preserved.
    """
    n = table.num_rows
    if n < 2:
        return table, 0
    group = list(dataset.primary_key)
    work = table.append_column("__row", pa.array(range(n), pa.int64()))
    if dataset.history is not None:
        group += [c.name for c in dataset.columns if c.name not in group and c.name in table.column_names]
        work = work.append_column("__valid_from", dataset.history.valid_from_arrow(table))
        group.append("__valid_from")
    keys = [(c, "ascending", "at_end") for c in group]
    keys += [(c, "descending", "at_end") for c in dataset.version_order]
    keys.append(("__row", "descending", "at_end"))
    order = pc.sort_indices(work, sort_keys=keys)
    sorted_group = work.select(group).take(order)
    first = pa.array([True] + [False] * (n - 1))
    for c in group:
        col = sorted_group.column(c).combine_chunks()
        prev = pa.concat_arrays([pa.nulls(1, col.type), col.slice(0, n - 1)])
        same = pc.or_kleene(pc.fill_null(pc.equal(col, prev), False), pc.and_(pc.is_null(col), pc.is_null(prev)))
        first = pc.or_(first, pc.invert(same))
    if pc.all(first).as_py():
        return table, 0
    kept_rows = pc.sort_indices(pc.filter(order, first))
    kept = pc.take(pc.filter(order, first), kept_rows)
    return table.take(kept), n - len(kept)
