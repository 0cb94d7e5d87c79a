"""One generated row as text: cut at the first stop string, streamed without ever sending a stop (pure, no torch).

Any generation engine uses it the same way: after each new token, :meth:`RowText.update` with the row's tokens
so far (it returns ``False`` once a stop string appeared: the engine stops the row, finish reason ``stop``);
:meth:`RowText.delta` gives the text that is safe to stream now; :meth:`RowText.finish` gives the rest once the
row ended. A detokenizer may change earlier characters as tokens arrive (a partial UTF-8 character, a leading
space), so tokens are not decoded one by one: each step decodes a short window of the latest tokens against the
window before them (the difference is the new text), and only when text is needed: with stop strings or streaming.
The pieces concatenate to the decoding of all the tokens for the tokenizers transformers ships.

Held back while streaming: a partial UTF-8 character (decoded as U+FFFD) until the next token completes it, and
any tail of the text that is the beginning of a stop string, until the text shows whether the stop string follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["RowText", "find_stop", "stop_prefix_len"]

Decode = Callable[[Sequence[int]], str]


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Return where the earliest stop string starts in ``text``, or ``None`` when none occurs."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Return the length of the longest tail of ``text`` that is a proper beginning of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class RowText:
    """The text of one generated row, cut before its first stop string.

    Args:
        decode: Token ids to text (special tokens dropped).
        stops: The stop strings (none: the row ends only at end-of-sequence or its token budget).
        streaming: Whether :meth:`delta` will be called (the text is then decoded after every token).
    """

    def __init__(self, decode: Decode, stops: Sequence[str] = (), *, streaming: bool = False) -> None:
        self._decode = decode
        self.stops = tuple(s for s in stops if s)
        self.streaming = streaming
        self.text = ""
        self.stopped = False
        self._sent = ""
        self._longest = max((len(s) for s in self.stops), default=0)
        # Windowed decoding: _done is the text of tokens[:_read] (whole characters); each step decodes only
        # tokens[_prefix:], against tokens[_prefix:_read], so a token costs a few tokens' decoding, not the answer's.
        self._done = ""
        self._prefix = 0
        self._read = 0

    def __repr__(self) -> str:
        return f"RowText(stops={len(self.stops)}, streaming={self.streaming}, stopped={self.stopped})"

    def _window(self, tokens: Sequence[int]) -> str | None:
        """The text so far, decoding a short window; ``None`` when the window disagrees (decode everything)."""
        before = self._decode(tokens[self._prefix : self._read]) if self._read > self._prefix else ""
        after = self._decode(tokens[self._prefix :])
        if not after.startswith(before):
            return None
        tail = after[len(before) :]
        # The window moves on once its text ends in a whole character (U+FFFD: a partial multi-byte one).
        if tail and not tail.endswith("\ufffd"):
            self._done += tail
            self._prefix, self._read = self._read, len(tokens)
            return self._done
        return self._done + tail

    def _cut(self, text: str, searched: int) -> None:
        """Set the text, cut before its first stop string; a new one can only end past ``searched``."""
        start = max(0, searched - self._longest + 1)
        found = find_stop(text[start:], self.stops)
        if found is None:
            self.text = text
        else:
            self.text, self.stopped = text[: start + found], True

    def update(self, tokens: Sequence[int]) -> bool:
        """Take the row's tokens so far; return ``False`` once a stop string appeared (stop the row)."""
        if self.stopped:
            return False
        if not (self.stops or self.streaming):
            return True  # decoded once, at the end
        searched = len(self._done)  # text that no longer changes, and had no stop string
        text = self._window(tokens)
        self._cut(self._decode(tokens) if text is None else text, 0 if text is None else searched)
        return not self.stopped

    def delta(self) -> str:
        """Return the new text that is safe to send now ('' when there is none yet)."""
        safe = self.text
        if not self.stopped:
            safe = safe[: len(safe) - stop_prefix_len(safe, self.stops)]
            safe = safe.rstrip("\ufffd")  # a partial multi-byte character: wait for the token that completes it
        if len(safe) > len(self._sent) and safe.startswith(self._sent):
            piece, self._sent = safe[len(self._sent) :], safe
            return piece
        return ""

    def finish(self, tokens: Sequence[int]) -> str:
        """Settle the final text once the row ended; return what of it was not sent by :meth:`delta` yet."""
        if not self.stopped:
            searched = len(self._done)
            text = self._window(tokens)
            self._cut(self._decode(tokens) if text is None else text, 0 if text is None else searched)
        if len(self.text) > len(self._sent) and self.text.startswith(self._sent):
            piece, self._sent = self.text[len(self._sent) :], self.text
            return piece
        return ""
