"""Commands from outside the trading loop (the REST API), carried out by the loop itself.

Another thread `submit`s a command and waits for the loop's answer; the loop `take`s the
waiting commands between its steps (at least every quarter second), carries each out and
answers with what it did. So the loop stays the only writer of positions and money.
"""
from __future__ import annotations

import queue
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

KINDS = ("pause", "resume", "force_exit", "stop")
ANSWER_TIMEOUT = 15.0     # wall seconds a caller waits for the loop (a cycle may be running)


class CommandError(Exception):
    """The loop refused a command: `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Command:
    kind: str
    symbol: str | None = None
    answer: Future = field(default_factory=Future)


class Commands:
    def __init__(self) -> None:
        self._waiting: queue.SimpleQueue[Command] = queue.SimpleQueue()

    def submit(self, kind: str, symbol: str | None = None,
               timeout: float = ANSWER_TIMEOUT) -> dict:
        """The loop's answer to one command (CommandError if it refused, TimeoutError if
        it did not answer in time: the command may still be carried out)."""
        if kind not in KINDS:
            raise CommandError(404, f"no command {kind!r} (commands: {', '.join(KINDS)})")
        command = Command(kind, symbol)
        self._waiting.put(command)
        try:
            return command.answer.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"the trading loop did not answer {kind} within {timeout:g}s; "
                               "it may still carry it out") from None

    def take(self) -> list[Command]:
        """Every command waiting (the loop's side)."""
        taken = []
        while True:
            try:
                taken.append(self._waiting.get_nowait())
            except queue.Empty:
                return taken
