"""`dirt notify test`: one test message through every configured channel, sent now (not
through the outbox), and a read that checks each forge's token."""

from __future__ import annotations

import os
from collections.abc import Mapping

from dirt.config import Settings
from dirt.notify.base import SendError
from dirt.notify.forges import GithubChannel, GitlabChannel
from dirt.notify.plan import Planner
from dirt.notify.sender import channels_from_settings, send_once

# (channel, why it failed or None, what happened)
CheckResult = tuple[str, str | None, str]


def check_channels(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[CheckResult]:
    """A result per configured channel; an empty list when none is configured."""
    notify = settings.notify
    channels = channels_from_settings(notify, os.environ if environ is None else environ)
    planner = Planner(notify, project=settings.name, base_url=settings.base_url)
    results: list[CheckResult] = []
    for item in planner.test():
        if item.channel == "email":
            label, detail = "email", "test message sent to " + ", ".join(item.payload["to"])
        else:
            label, detail = f"webhook {item.target}", "test event delivered"
        results.append((label, send_once(channels, item), detail))
    for name in ("github", "gitlab"):
        channel = channels.get(name)
        if isinstance(channel, GithubChannel | GitlabChannel):
            try:
                results.append((name, None, channel.check()))
            except SendError as exc:
                results.append((name, str(exc), ""))
    return results
