"""Jinja2 environment and the filters the templates use; every value is autoescaped."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from dirt.models import TaskState
from dirt.views import attachment_url, output_url

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# The stacked bar, the legend and the chart read as the original's: outcomes first, then work
# still to do. A state not ranked here (a new one) comes last, never missing.
_BAR_RANK = {
    TaskState.SUCCEEDED: 0,
    TaskState.FAILED: 1,
    TaskState.RUNNING: 2,
    TaskState.WAITING: 3,
}
STATE_ORDER = tuple(s.value for s in sorted(TaskState, key=lambda s: _BAR_RANK.get(s, 99)))


def when(epoch: float | None) -> Markup:
    """A <time> the page's script shows in the viewer's local time (UTC without script)."""
    if epoch is None:
        return Markup('<span class="none">-</span>')
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    text = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    return Markup('<time datetime="{}" data-epoch="{}">{}</time>').format(iso, epoch, text)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def clip(text: str | None, limit: int = 80) -> str:
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def lastline(text: str | None, limit: int = 80) -> str:
    """The last line of a reason (a traceback's last line names the error)."""
    lines = (text or "").strip().splitlines()
    return clip(lines[-1], limit) if lines else ""


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def bar(counts: dict[str, int], width: int = 160) -> Markup:
    """A record's stacked bar: succeeded, failed, running, waiting (as the original)."""
    total = sum(counts.values())
    label = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATE_ORDER if counts.get(s, 0))
    label = label or "no tasks"
    parts = [
        Markup(
            '<svg class="bar" viewBox="0 0 {w} 12" width="{w}" height="12" role="img" '
            'aria-label="{label}"><title>{label}</title>'
        ).format(w=width, label=label)
    ]
    x = 0.0
    for state in STATE_ORDER:
        n = counts.get(state, 0)
        if not n or not total:
            continue
        w = width * n / total
        parts.append(
            Markup(
                '<rect class="s-{s}" x="{x:.2f}" y="0" width="{w:.2f}" height="12">'
                "<title>{n} {s}</title></rect>"
            ).format(s=state, x=x, w=w, n=n)
        )
        x += w
    if not total:
        parts.append(Markup(f'<rect class="s-empty" x="0" y="0" width="{width}" height="12"/>'))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def chart(runs: list[dict[str, Any]], width: int = 800, height: int = 160) -> Markup:
    """Duration and outcome per run, oldest left; bars coloured by state."""
    runs = list(reversed(runs))
    if not runs:
        return Markup('<p class="none">No runs yet.</p>')
    durations = [
        (r["completed"] - r["started"]) if r["started"] and r["completed"] else None for r in runs
    ]
    top = max([d for d in durations if d is not None] or [1.0]) or 1.0
    step = width / max(len(runs), 40)
    gap = 1 if step > 3 else 0
    out = [
        Markup(
            '<svg class="chart" viewBox="0 0 {w} {h}" width="100%" height="{h}" '
            'preserveAspectRatio="none" role="img" aria-label="duration per run">'
        ).format(w=width, h=height + 14)
    ]
    for i, (run, d) in enumerate(zip(runs, durations, strict=True)):
        h = max(2.0, height * (d / top)) if d is not None else 4.0
        title = "{} on {}: {} ({})".format(
            run["record_id"],
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(run["created"])),
            run["state"],
            duration(d),
        )
        out.append(
            Markup(
                '<rect class="s-{s}" x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}">'
                "<title>{t}</title></rect>"
            ).format(s=run["state"], x=i * step, y=height - h, w=max(step - gap, 0.5), h=h, t=title)
        )
    out.append(
        Markup(
            '<line class="axis" x1="0" y1="{h}" x2="{w}" y2="{h}"/>'
            '<text x="2" y="{t}" class="axis-label">longest {d}</text></svg>'
        ).format(h=height, w=width, t=height + 12, d=duration(top))
    )
    return Markup("").join(out)


def query(**params: Any) -> str:
    """`?a=1&b=2` of the params that are set."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return ("?" + urlencode(kept)) if kept else ""


def percent(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{100 * value:.0f}%"


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.autoescape = True
    env.filters.update(
        when=when,
        duration=duration,
        clip=clip,
        lastline=lastline,
        pretty=pretty,
        bar=bar,
        percent=percent,
        q=lambda value: quote(str(value), safe=""),
    )
    env.globals.update(
        attachment_url=attachment_url,
        output_url=output_url,
        query=query,
        chart=chart,
        STATE_ORDER=STATE_ORDER,
        TaskState=TaskState,
    )
    return templates
