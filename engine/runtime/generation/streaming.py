"""Streaming and cancellation for the decode loops.

- A :class:`Streamer` receives each step's tokens from greedy search (transformers'
  ``BaseStreamer``: ``put(token_ids)`` every step, ``end()`` when the search is done; unlike
  transformers the decoder start token is never put). :class:`TextIteratorStreamer` turns them
  into text pieces that another thread iterates, as ``RagEngine.stream`` does.
- A :class:`Cancellation` is checked by every decode loop once per step (greedy, beam search,
  RAG-Sequence candidates and rescoring): once cancelled, the loop raises
  :class:`ragrt.errors.Cancelled` before its next step, so an abandoned request stops within one
  step instead of decoding to the end.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from ragrt.errors import Cancelled

#: the entry of a row that finished at an earlier step, in the array given to ``put``
FINISHED = -1


class Streamer(Protocol):
    def put(self, token_ids: np.ndarray) -> None:
        """The tokens chosen at one step, int64 ``[rows]`` (one per row the search started
        with; :data:`FINISHED` for a row that ended earlier)."""
        ...

    def end(self) -> None:
        """The search finished normally (not called when it raised)."""
        ...


class Cancellation:
    """A flag the decode loops poll. ``cancel()`` sets it; ``poll``, when given, is asked too
    (e.g. a Triton response sender's ``is_cancelled``), so a client that went away stops the
    decode without anyone calling ``cancel``."""

    def __init__(self, poll: Callable[[], bool] | None = None):
        self._event = threading.Event()
        self._poll = poll

    def cancel(self) -> None:
        self._event.set()

    def cancelled(self) -> bool:
        if self._event.is_set():
            return True
        if self._poll is not None and self._poll():
            self._event.set()
            return True
        return False

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancelled."""
        if self.cancelled():
            raise Cancelled("generation cancelled: the caller stopped reading or went away")


def check_cancelled(stopping: Cancellation | None) -> None:
    """What a decode loop calls before each step."""
    if stopping is not None:
        stopping.check()


class Detokenizer(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


_END = object()


class TextIteratorStreamer:
    """Text pieces of one row as greedy search decides its tokens, iterated on another thread.

    Each ``put`` re-decodes the row's tokens and queues the new text; text ending in an
    incomplete UTF-8 character (U+FFFD) is held back until the character is complete, and
    ``end`` queues whatever was held back. The queue is bounded: the decode runs at most
    ``max_ahead`` pieces ahead of the consumer, and a decode blocked on a full queue gives up
    (:class:`Cancelled`) once ``stopping`` is cancelled.
    """

    def __init__(
        self,
        tokenizer: Detokenizer,
        stopping: Cancellation | None = None,
        max_ahead: int = 8,
    ):
        self.tokenizer = tokenizer
        self.stopping = stopping
        self.tokens: list[int] = []
        self.sent = ""
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_ahead)
        self._error: BaseException | None = None

    # -- producer side (the decode thread) -----------------------------------------------
    def put(self, token_ids: np.ndarray) -> None:
        tok = int(np.asarray(token_ids).reshape(-1)[0])
        if tok == FINISHED:
            return
        self.tokens.append(tok)
        self._emit(self.tokenizer.decode(self.tokens), final=False)

    def end(self) -> None:
        self._emit(self.tokenizer.decode(self.tokens), final=True)
        self._send(_END)

    def fail(self, error: BaseException) -> None:
        """The decode raised: the consumer re-raises ``error`` after the queued pieces."""
        self._error = error
        self._send(_END)

    def _emit(self, text: str, final: bool) -> None:
        if not final and text.endswith("\ufffd"):
            return
        if text.startswith(self.sent) and len(text) > len(self.sent):
            piece, self.sent = text[len(self.sent) :], text
            self._send(piece)

    def _send(self, item: object) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                check_cancelled(self.stopping)

    # -- consumer side -------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            assert isinstance(item, str)
            yield item

    def drain(self) -> None:
        """Empty the queue (frees a decode blocked on it)."""
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
