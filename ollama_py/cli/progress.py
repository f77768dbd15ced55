"""Progress on stderr for pull, push and create, drawn with rich the way Ollama draws it.

The server streams statuses (`pulling manifest`, `writing manifest`,
`success`) and, for blobs, a digest with total and completed bytes. A status
without a digest is a spinner line that stays printed once the next one
starts; a digest gets a bar with its size, speed and time left. When stderr is
not a terminal rich draws no animation, only the final state, so logs and
tests still read every step.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType

from rich.console import Console, RenderableType
from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID,
                           TaskProgressColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.text import Text

log = logging.getLogger(__name__)


class _ForBars(ProgressColumn):
    """A column shown only on byte-counting lines; spinner lines leave it blank."""

    def __init__(self, inner: ProgressColumn) -> None:
        super().__init__()
        self._inner = inner

    def render(self, task: Task) -> RenderableType:
        return self._inner.render(task) if task.fields.get("bar") else Text("")


class _ForSpinners(ProgressColumn):
    """The spinner, turning only while its status is the current one."""

    def __init__(self) -> None:
        super().__init__()
        self._spinner = SpinnerColumn()

    def render(self, task: Task) -> RenderableType:
        if task.fields.get("bar") or task.fields.get("done"):
            return Text("")
        return self._spinner.render(task)


class ProgressView:
    """Renders a stream of (status, digest, total, completed) updates; use it as a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), _ForSpinners(), _ForBars(TaskProgressColumn()),
            _ForBars(BarColumn(bar_width=40)), _ForBars(DownloadColumn(binary_units=False)),
            _ForBars(TransferSpeedColumn()), _ForBars(TimeRemainingColumn()),
            console=console or Console(file=sys.stderr), transient=False)
        self._bars: dict[str, TaskID] = {}
        self._status = ""
        self._spinner: TaskID | None = None

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress.live.is_started:
            self._stop_spinner()
            self._progress.stop()

    def _stop_spinner(self) -> None:
        if self._spinner is not None:
            self._progress.update(self._spinner, done=True)
            self._spinner = None

    def update(self, status: str, digest: str = "", total: int = 0, completed: int = 0) -> None:
        """One streamed progress object: a bar per digest with a size, a spinner line per new status.

        The display starts with the first update, so a request refused at once leaves no empty line.
        """
        if not self._progress.live.is_started:
            self._progress.start()
        if digest and total:
            task = self._bars.get(digest)
            if task is None:
                self._stop_spinner()
                label = status if digest[7:19] in status else f"{status} {digest[7:19]}"
                task = self._progress.add_task(label, total=total, bar=True)
                self._bars[digest] = task
            self._progress.update(task, completed=completed)
            return
        if status == self._status:
            return
        self._stop_spinner()
        self._status = status
        self._spinner = self._progress.add_task(status, total=None, bar=False, done=False)
