"""The one backoff helper: exponential delays with a cap, like huey's Worker.sleep."""


class Backoff:
    """Delays of ``initial * factor**n``, capped at ``cap``.

    >>> b = Backoff(1, factor=2, cap=5)
    >>> [b.next() for _ in range(4)], b.attempts, b.delay
    ([1, 2, 4, 5], 4, 5)
    """

    def __init__(self, initial, factor=2.0, cap=60.0):
        self.attempts = 0
        self.retune(initial, factor, cap)

    def retune(self, initial, factor=None, cap=None):
        """Change the delays (live configuration) without forgetting how many attempts failed."""
        factor = self.factor if factor is None else factor
        cap = self.cap if cap is None else cap
        if initial <= 0 or factor < 1 or cap < initial:
            raise ValueError("backoff needs initial > 0, factor >= 1, cap >= initial")
        self.initial, self.factor, self.cap = initial, factor, cap

    def next(self):
        """Count one more failed attempt and return how long to wait before the next."""
        self.attempts += 1
        return self.delay

    @property
    def delay(self):
        """The delay the last ``next()`` handed out (0 while nothing is failing)."""
        if not self.attempts:
            return 0
        return min(self.cap, self.initial * self.factor ** (self.attempts - 1))

    def reset(self):
        self.attempts = 0
