"""The events stream: the one small interface through which training reports what it does.

The trainer calls `events.emit("step", step=..., loss=...)`; listeners turn that into a line of events.jsonl
(which the UI and users' scripts read), a terminal progress bar, or anything else. Contract (DESIGN.md): each
event has "event" and "time" (unix seconds) plus the fields that apply: step, total_steps, loss, lr,
samples_per_s, path, message.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Protocol

EVENT_KINDS = ("start", "step", "sample", "checkpoint", "done", "stopped", "error", "warning", "validation")


class Listener(Protocol):
    def __call__(self, event: dict[str, Any]) -> None: ...


class EventBus:
    def __init__(self, listeners: list[Listener] | None = None):
        self.listeners: list[Listener] = list(listeners or [])

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        assert kind in EVENT_KINDS, kind
        event = {"event": kind, "time": round(time.time(), 3)}
        event.update({k: _plain(v) for k, v in fields.items() if v is not None})
        for listener in self.listeners:
            listener(event)
        return event

    def close(self) -> None:
        for listener in self.listeners:
            close = getattr(listener, "close", None)
            if close:
                close()


def _plain(value: Any) -> Any:
    """JSON-safe values: tensors to floats, paths to strings, non-finite floats to strings."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlWriter:
    """Appends each event to events.jsonl and flushes, so a reader sees it at once and a crash loses nothing."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fh = open(path, "a", encoding="utf-8")
        # A writer killed (or out of disk) mid-line left a torn last line: start on a fresh one, so the first
        # event is not glued onto it (readers skip the torn line).
        self.torn = path.stat().st_size > 0 and _last_byte(path) != b"\n"

    def __call__(self, event: dict[str, Any]) -> None:
        line = ("\n" if self.torn else "") + json.dumps(event, ensure_ascii=False) + "\n"
        self.torn = True  # until the line is on the disk whole
        try:
            self.fh.write(line)
            self.fh.flush()
        except OSError:
            try:  # what the failed flush kept buffered goes, or fails to, now; the next line starts fresh anyway
                self.fh.close()
            except OSError:
                pass
            self.fh = open(self.path, "a", encoding="utf-8")
            raise
        self.torn = False
        if event["event"] in ("done", "stopped", "error", "checkpoint"):
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


class ConsoleReporter:
    """A terminal progress bar (step, loss, it/s, ETA) and one line for everything else."""

    def __init__(self, stream=None, bar: bool | None = None):
        self.stream = stream or sys.stderr
        self.bar_enabled = self.stream.isatty() if bar is None else bar
        self.bar = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "step":
            self._step(event)
            return
        message = {
            "start": lambda e: f"training {e.get('total_steps')} steps -> {e.get('path')}",
            "sample": lambda e: f"step {e.get('step')}: samples in {e.get('path')}",
            "checkpoint": lambda e: f"step {e.get('step')}: checkpoint {e.get('path')}",
            "done": lambda e: f"done: {e.get('path')}",
            "stopped": lambda e: f"stopped at step {e.get('step')}: {e.get('message', '')}",
            "error": lambda e: f"error: {e.get('message')}",
            "warning": lambda e: f"warning: {e.get('message')}",
            "validation": lambda e: f"step {e.get('step')}: validation loss {e.get('loss')}"
                                    + (" (lowest so far)" if e.get("best") else ""),
        }[kind](event)
        self._write(message)

    def _write(self, text: str) -> None:
        from sdlora.text import printable

        text = printable(text)  # messages quote file names and captions
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _step(self, event: dict[str, Any]) -> None:
        if not self.bar_enabled:
            step, total = event.get("step", 0), event.get("total_steps", 0)
            # Without a terminal, a line every ~5% keeps logs readable.
            if step == total or step % max(1, total // 20) == 0:
                print(f"step {step}/{total} loss {event.get('loss', float('nan')):.4f} "
                      f"{event.get('samples_per_s', 0):.2f} samples/s", file=self.stream, flush=True)
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=event.get("total_steps"), initial=event["step"] - 1, file=self.stream,
                            unit="step", dynamic_ncols=True)
        self.bar.update(event["step"] - self.bar.n)
        self.bar.set_postfix(loss=f"{event.get('loss', float('nan')):.4f}", lr=f"{event.get('lr', 0):.2e}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EventTail:
    """Reads an events.jsonl incrementally: each `read()` returns all events so far, parsing only new lines.

    A half-written last line (a writer mid-flush) waits for the next read; a torn line in the middle (a writer
    killed mid-line, DESIGN.md) is skipped. A file that shrank was replaced: it is read again from its start."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.events: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return self.events
        with open(self.path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < self.offset:
                self.offset, self.events = 0, []
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                self.events.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
        self.offset += end
        return self.events


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of a run so far (`EventTail` once); a torn or half-written line is skipped."""
    yield from EventTail(path).read()
