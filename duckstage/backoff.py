"""The one backoff helper: exponential delays with a cap, like huey's Worker.sleep."""


class Backoff:
    """Delays of ``initial * factor**n``, capped at ``cap``.

    >>> b = Backoff(1, factor=2, cap=5)
    >>> [b.next() for _ in range(4)]
    [1, 2, 4, 5]
    """

    def __init__(self, initial, factor=2.0, cap=60.0):
        if initial <= 0 or factor < 1 or cap < initial:
            raise ValueError("backoff needs initial > 0, factor >= 1, cap >= initial")
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self.attempts = 0

    def next(self):
        delay = min(self.cap, self.initial * self.factor ** self.attempts)
        self.attempts += 1
        return delay

    def reset(self):
        self.attempts = 0

    @property
    def waiting(self):
        """True while the resource is still failing (a delay was handed out)."""
        return self.attempts > 0
