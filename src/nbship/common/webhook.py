"""One JSON POST of alerts to a webhook: what `nbship monitor`'s webhook sink and a
server's release guard rails both send, so receivers parse one format."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any


def post_alerts(url: str, alerts: Sequence[Mapping[str, Any]], timeout_s: float) -> None:
    """POSTs {"source": "nbship", "alerts": [...]}; raises on a refused or failed POST
    (urlopen raises HTTPError on a 4xx/5xx answer): the caller decides what a failure costs."""
    body = json.dumps({"source": "nbship", "alerts": list(alerts)}, allow_nan=False).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "nbship-alerts"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()
