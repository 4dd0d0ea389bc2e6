"""One thread that makes every call on the API session.

Gradio runs each event handler in a thread of its own pool; the session cannot be shared that
way: the library's SQLite connection belongs to the thread that opened it, and one process's
models can only run one generation at a time. So every call goes to this single thread, in the
order the events came, and the handler thread waits for it (passing progress on as it comes).
"""

from __future__ import annotations

import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from elite_cli.api import Session


class SessionWorker:
    def __init__(self, session: "Session"):
        self.session = session
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="elite-session")

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """function(session, *args, **kwargs) on the session's thread."""
        return self._executor.submit(function, self.session, *args, **kwargs)

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """function(session, *args, **kwargs) on the session's thread; its result or its exception."""
        return self.submit(function, *args, **kwargs).result()

    def call_with_events(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Run function(session, emit, *args, **kwargs) on the session's thread and yield, in this
        thread, what it passes to emit(...) while it runs; the last item yielded is its Future
        (done). The caller reports progress as it comes without touching the session itself."""
        events: queue.Queue = queue.Queue()
        future = self.submit(function, events.put, *args, **kwargs)
        # The Future itself marks the end: no polling, so the last step is reported without delay.
        future.add_done_callback(events.put)
        while True:
            event = events.get()
            yield event
            if event is future:
                return

    def close(self) -> None:
        """Let the running call finish, then close the session on its own thread."""
        self._executor.submit(lambda: self.session.close())
        self._executor.shutdown(wait=True)
