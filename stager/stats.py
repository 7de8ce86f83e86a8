"""The stager's statistics: what it took in, staged and refused, per task type, and its errors by class.

Worker and sealer threads count; ``Stager.get_status()`` reads. One lock
keeps a reading consistent across counters (a row is never both in
``rows_in`` and missing from every outcome).
"""

import threading
from collections import Counter, deque

from duckstage.ops import LagHistogram

UNKNOWN = "_unknown"  # the task type counted for tasks whose task type is not declared


class Statistics:
    def __init__(self, task_types, clock):
        self.clock = clock
        self._lock = threading.Lock()
        self.counters = {name: Counter() for name in task_types}
        self.errors = Counter()  # error class -> count
        self.deadlettered_by_reason = {}  # task type -> Counter(reason code)
        self.seal_lag = LagHistogram()
        self._rate = deque(maxlen=120)  # (clock, rows staged so far)

    def count(self, task_type, **values):
        with self._lock:
            self.counters.setdefault(task_type or UNKNOWN, Counter()).update(values)
            if "rows_staged" in values:
                total = sum(c["rows_staged"] for c in self.counters.values())
                self._rate.append((self.clock(), total))

    def error(self, error_class, n=1):
        with self._lock:
            self.errors[error_class] += n

    def dead_lettered(self, task_type, refusals):
        """Count refused rows ([Refusal]) once they are in the dead letter: by their reason code."""
        task_type = task_type or UNKNOWN
        with self._lock:
            self.counters.setdefault(task_type, Counter())["deadlettered"] += len(refusals)
            self.deadlettered_by_reason.setdefault(task_type, Counter()).update(r.code for r in refusals)
            self.errors["data_format"] += len(refusals)

    def per_task_type(self, buffers, now):
        """The status figures of each task type, buffers included."""
        with self._lock:
            figures = {}
            for name, counter in self.counters.items():
                buffer = buffers.get(name)
                figures[name] = {
                    "tasks": counter["tasks"], "rows_in": counter["rows_in"],
                    "rows_staged": counter["rows_staged"], "files_sealed": counter["files"],
                    "seal_failures": counter["seal_failures"],
                    "rows_deadlettered": counter["deadlettered"], "rows_superseded": counter["superseded"],
                    "rows_filtered": counter["rows_filtered"],
                    "deadlettered_by_reason": dict(self.deadlettered_by_reason.get(name, {})),
                    "buffer_rows": buffer.rows if buffer else 0,
                    "buffer_bytes": buffer.nbytes if buffer else 0,
                    "buffer_age_seconds": round(buffer.age(now), 3) if buffer else 0.0,
                }
            return figures

    def rows_per_second(self):
        """Rows staged per second over the last ~120 seals."""
        with self._lock:
            if len(self._rate) < 2 or self._rate[-1][0] <= self._rate[0][0]:
                return 0.0
            (t0, r0), (t1, r1) = self._rate[0], self._rate[-1]
            return (r1 - r0) / (t1 - t0)
