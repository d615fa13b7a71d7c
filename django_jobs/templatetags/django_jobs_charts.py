"""``{% bar_chart %}``: a stacked bar chart drawn on the server as inline SVG.

No JavaScript and no dependency: the markup carries classes only, and the admin's
stylesheet colours them with the admin's CSS variables (``static/django_jobs/admin.css``),
so the chart follows the light and dark themes and a strict Content-Security-Policy.
"""

from collections.abc import Sequence
from typing import Any

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

register = template.Library()

WIDTH, HEIGHT = 600, 160
LEFT, BOTTOM, TOP = 44, 20, 8


def _nice_max(value: int) -> int:
    """Round the axis up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover


def _f(value: float) -> str:
    return f"{value:.1f}"


def _short(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1_000:
        return f"{n / 1_000:g}k"
    return str(n)


@register.simple_tag
def bar_chart(
    buckets: Sequence[Any],
    series: str = "successful,failed",
    label_format: str = "%H:%M",
    label_every: int = 10,
    title: str = "",
) -> SafeString:
    """Draw ``buckets`` (objects with ``start`` and one attribute per series) as stacked bars."""
    names = [s.strip() for s in series.split(",") if s.strip()]
    totals = [sum(getattr(b, n) for n in names) for b in buckets]
    top = _nice_max(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(slot * 0.8, 1)
    parts: list[str] = []
    for fraction in (0, 0.5, 1):  # grid lines with their values
        y = TOP + plot_h * (1 - fraction)
        parts.append(
            format_html(
                '<line class="jobs-chart-grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
                '<text class="jobs-chart-axis" x="{}" y="{}" text-anchor="end">{}</text>',
                LEFT,
                WIDTH - 4,
                _f(y),
                _f(y),
                LEFT - 4,
                _f(y + 4),
                _short(int(top * fraction)),
            )
        )
    for i, bucket in enumerate(buckets):
        x = LEFT + i * slot + (slot - bar_w) / 2
        y = TOP + plot_h
        tip = ", ".join(f"{getattr(bucket, n)} {n}" for n in names)
        for name in names:
            value = getattr(bucket, name)
            if not value:
                continue
            h = plot_h * value / top
            y -= h
            parts.append(
                format_html(
                    '<rect class="jobs-chart-{}" x="{}" y="{}" width="{}" '
                    'height="{}"><title>{}: {}</title></rect>',
                    name,
                    _f(x),
                    _f(y),
                    _f(bar_w),
                    _f(h),
                    bucket.start.strftime(label_format),
                    tip,
                )
            )
        if i % label_every == 0:
            parts.append(
                format_html(
                    '<text class="jobs-chart-axis" x="{}" y="{}" text-anchor="middle">{}</text>',
                    _f(x + bar_w / 2),
                    HEIGHT - 4,
                    bucket.start.strftime(label_format),
                )
            )
    legend = format_html_join(
        "",
        '<span class="jobs-legend jobs-legend-{}">{}</span>',
        ((n, n) for n in names),
    )
    svg = format_html(
        '<svg class="jobs-chart" viewBox="0 0 {} {}" role="img" aria-label="{}">{}</svg>'
        '<div class="jobs-chart-legend">{}</div>',
        WIDTH,
        HEIGHT,
        title,
        format_html_join("", "{}", ((part,) for part in parts)),
        legend,
    )
    return svg


@register.filter
def short_task(path: str) -> str:
    """The function's name from a task's dotted path."""
    return str(path).rsplit(".", 1)[-1]


@register.filter
def age(seconds: float | None) -> str:
    """Seconds as a short human duration ("-" for none)."""
    if seconds is None:
        return "-"
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172_800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds / 86400:.1f} d"
