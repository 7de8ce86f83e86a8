"""The stager's hold on Huey work: claiming it, and letting it go (acknowledge or release).

A claim is acknowledged only once every row of it is in a sealed file or in
the (fsynced) dead letter; a claim whose refused rows could not be written is
released, to be handed out again. Huey's storage may be busy (another process
holds the SQLite file): settling retries with backoff rather than give up at
the first refusal, since a claim left unsettled only runs again after a restart.
"""

import logging
import threading
import time

from duckstage.backoff import Backoff

log = logging.getLogger(__name__)

SETTLE_ATTEMPTS = 20  # then give up: the claims stay leased and run again after a restart


class Claims:
    def __init__(self, source, stats):
        self.source = source  # a QueueSource or a ResultSource (stager.sources)
        self.stats = stats
        self._recover_lock = threading.Lock()
        self._recovered = False
        # Rows of the smaller of the last two leases when both came back full (a backlog), else 0.
        # Buffers of a task type grow past batch_size while this is at least its batch_size:
        # a file's worth of rows waits, so a bigger file makes none of them wait (stager.buffer).
        # One full lease alone may have taken all there was; a lease of tiny tasks is no backlog
        # of rows, and growing files would only hold them back. A short lease ends it. Plain
        # attributes: each claim overwrites them, whichever worker made it.
        self.backlog = 0
        self._last_rows = 0
        self._mine = threading.local()  # the backlog as the calling thread's last claim found it

    def recover(self):
        """Once per start: release the leases of earlier instances, so their tasks run again."""
        with self._recover_lock:
            if self._recovered:
                return
            moved = self.source.recover()
            self._recovered = True
        if moved:
            log.warning("re-queued %d task(s) leased by an earlier stager that did not finish", moved)

    def claim(self):
        """The next lease batch of claims (empty: no work)."""
        self.recover()
        claims = self.source.claim_many()
        rows = sum(c.result.rows for c in claims) if len(claims) >= self.source.LEASE_BATCH else 0
        # This thread's own last lease counts too: another worker's short lease, taken after
        # ours but noted first, would otherwise make a lease of the backlog look like the end.
        backlog = min(rows, max(self._last_rows, getattr(self._mine, "rows", 0)))
        self.backlog, self._last_rows = backlog, rows
        self._mine.rows, self._mine.backlog = rows, backlog
        return claims

    def claimed_in_backlog(self):
        """The backlog (rows, 0: none) this thread's last claim was made under.

        Its tasks are still being staged when another worker's short claim ends
        the backlog; judged by the end, each of them would be sealed alone.
        """
        return getattr(self._mine, "backlog", 0)

    def ack(self, tokens):
        # Sealed but not acknowledged if this gives up: the tasks run again after a
        # restart and the loader's MERGE absorbs the duplicate rows.
        self._settle(self.source.ack, tokens, "acknowledge", "they will be staged again after a restart")

    def release(self, tokens):
        self._settle(self.source.release, tokens, "release", "they run again after a restart")

    def _settle(self, settle, tokens, verb, otherwise):
        tokens = [t for t in tokens if t is not None]
        backoff = Backoff(0.05, 2.0, 5.0)
        while True:
            try:
                settle(tokens)
                return
            except Exception as exc:  # noqa: BLE001 - sqlite busy/IO: keep trying
                self.stats.error("database_connection")
                delay = backoff.next()
                log.warning("cannot %s %d claim(s) yet (%s); retrying in %.2fs", verb, len(tokens), exc, delay)
                if backoff.attempts > SETTLE_ATTEMPTS:
                    log.error("giving up trying to %s %d claim(s); %s", verb, len(tokens), otherwise)
                    return
                # Not a wait on the stop event: the seals of a stop must still be acknowledged.
                time.sleep(delay)
