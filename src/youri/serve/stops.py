"""``stop`` strings: a choice's text cut at the first of them."""

from __future__ import annotations


class StopText:
    """One choice's text cut at the first of its ``stop`` strings (which is not returned, as in OpenAI).

    Streamed text that could still turn into a stop string is held back until it cannot, so no
    delta ever has to be taken back.
    """

    def __init__(self, stops: list[str]):
        self.stops, self.held, self.hit = stops, "", False

    def push(self, delta: str) -> str:
        """What may be emitted now of the text so far (held back + ``delta``)."""
        if self.hit or not self.stops:
            return "" if self.hit else delta
        text = self.held + delta
        found = [at for at in (text.find(stop) for stop in self.stops) if at >= 0]
        if found:
            self.hit, self.held = True, ""
            return text[: min(found)]
        keep = max((k for stop in self.stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of the completion (it never became a stop string)."""
        held, self.held = self.held, ""
        return held
