"""``stop`` strings: a choice's text cut at the first of them, matched incrementally.

Each stop string has a Knuth-Morris-Pratt automaton whose state is the longest prefix of the stop
string that ends the text so far. A delta advances every automaton by its characters (amortised O(1)
per character and stop string), and only that tail -- at most the longest stop string minus one
character -- is ever held back: the work is linear in the text produced, whatever the stop strings.
"""

from __future__ import annotations


def _failure(stop: str) -> list[int]:
    """KMP's failure function: ``fail[i]`` = length of the longest proper border of ``stop[: i + 1]``."""
    fail, k = [0] * len(stop), 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = fail[k - 1]
        if stop[i] == stop[k]:
            k += 1
        fail[i] = k
    return fail


class StopText:
    """One choice's text cut at the first of its ``stop`` strings (which is not returned, as in OpenAI).

    Streamed text that could still turn into a stop string is held back until it cannot, so no
    delta ever has to be taken back. The first stop string to be completed wins (the longest one
    when several complete on the same character).
    """

    def __init__(self, stops: list[str]):
        self.stops, self.held, self.hit, self.rest = stops, "", False, ""
        self._fail = [_failure(stop) for stop in stops]
        self._state = [0] * len(stops)  # per stop string: how much of it ends the text so far

    def push(self, delta: str) -> str:
        """What may be emitted now of the text so far (held back + ``delta``)."""
        if self.hit or not self.stops:
            return "" if self.hit else delta
        text, base = self.held + delta, len(self.held)
        for at, char in enumerate(delta):
            cut = None
            for j, stop in enumerate(self.stops):
                k, fail = self._state[j], self._fail[j]
                while k and stop[k] != char:
                    k = fail[k - 1]
                if stop[k] == char:
                    k += 1
                if k == len(stop):
                    start = base + at + 1 - k
                    cut = start if cut is None else min(cut, start)
                    k = fail[k - 1]
                self._state[j] = k
            if cut is not None:
                self.hit, self.held = True, ""
                self.rest = text[base + at + 1 :]  # what followed the stop string in this delta
                return text[:cut]
        keep = max(self._state)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of the completion (it never became a stop string)."""
        held, self.held = self.held, ""
        return held
