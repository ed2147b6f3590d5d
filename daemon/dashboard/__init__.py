"""The daemon's web dashboard: the newest raw and restored frames of every run, live, and its counters.

The daemon's write and restore loops only offer their newest frames to a :class:`PreviewMailbox`
(no copy, no wait); :class:`Dashboard` runs its own thread and event loop (aiohttp), samples the
daemon's status, renders small PNGs on a render thread of its own and serves the page
(``static/index.html``), the JSON API and a WebSocket. Parts:

- :mod:`.config`: the ``dashboard`` section of ``config.yaml``.
- :mod:`.mailbox`: the hand-off from the daemon's loops, one slot per run, newest wins.
- :mod:`.render` (pure) and :mod:`.previews` (cache, shared contrast): frames to PNGs.
- :mod:`.history`: counters over time for the charts.
- :mod:`.disk`: frames on disk, for the slider; the one place that knows the store's layout.
- :mod:`.app` (routes), :mod:`.live` (WebSocket sessions), :mod:`.service` (thread and loop).
"""

from .config import DashboardConfig, is_loopback
from .mailbox import PreviewMailbox
from .service import Dashboard, DashboardError, start_dashboard

__all__ = ["Dashboard", "DashboardConfig", "DashboardError", "PreviewMailbox", "is_loopback", "start_dashboard"]
