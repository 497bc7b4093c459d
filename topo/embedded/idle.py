"""P4Runtime idle-timeout notifications of the embedded switch.

An entry written with ``idle_timeout_ns > 0`` (only in tables whose P4Info has
``idle_timeout_behavior: NOTIFY_CONTROL``; the pipeline refuses it elsewhere) that is not
hit for that long is reported to the primary client of the default role in a
``StreamMessageResponse.idle_timeout_notification``, and again every further
``idle_timeout_ns`` while it stays idle. The switch never deletes it: the controller does
(docs/p4-api.md). Hits are recorded by the pipeline's packet path (``Entry.last_hit``);
a thread checks every ``period_s``.
"""

from __future__ import annotations

import logging
import threading
import time

from finsy.proto import p4r

log = logging.getLogger("mfs.switch.idle")


class IdleNotifier:
    def __init__(self, service, period_s: float = 0.05):
        self.service, self.period_s = service, period_s
        self.sent = 0  # notifications sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-timeouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def check(self, now: float | None = None) -> int:
        """Send one notification with every entry idle at ``now``; returns how many entries."""
        svc = self.service
        idle = svc.switch.idle_entries(time.monotonic() if now is None else now)
        if not idle:
            return 0
        n = p4r.IdleTimeoutNotification(timestamp=time.time_ns())
        for _name, e in idle:
            te = svc._entry_msg(e)
            te.idle_timeout_ns = e.idle_ns
            n.table_entry.append(te)
        with svc.lock:
            p = svc.primary("")
            if p is not None:
                p.send(p4r.StreamMessageResponse(idle_timeout_notification=n))
                self.sent += 1
        return len(idle)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a bad moment (pipeline reset) must not stop the thread
                log.exception("idle-timeout check failed")
