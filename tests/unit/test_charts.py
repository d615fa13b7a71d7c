"""The SVG chart tag renders from plain objects, with classes only (no inline styles)."""

from datetime import UTC, datetime, timedelta

from django_jobs.console.stats import Bucket
from django_jobs.templatetags.django_jobs_charts import _nice_max, age, bar_chart


def test_bar_chart_stacks_series_and_labels_the_axis():
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    buckets = [Bucket(start + timedelta(minutes=i), successful=i, failed=i % 2) for i in range(6)]
    svg = str(bar_chart(buckets, "successful,failed", "%H:%M", 5, "per minute"))
    assert svg.startswith('<svg class="jobs-chart"')
    assert svg.count('class="jobs-chart-successful"') == 5  # the empty first bucket draws none
    assert svg.count('class="jobs-chart-failed"') == 3
    assert ">12:00</text>" in svg
    assert ">12:05</text>" in svg
    assert "style=" not in svg
    assert "<script" not in svg


def test_bar_chart_of_nothing_is_an_empty_grid():
    svg = str(bar_chart([], title="<b>x</b>"))
    assert "<rect" not in svg
    assert "&lt;b&gt;" in svg


def test_axis_and_age_helpers():
    assert [_nice_max(n) for n in (0, 1, 3, 7, 11, 160, 4000)] == [1, 1, 5, 10, 20, 200, 5000]
    assert [age(None), age(5), age(600), age(10_000), age(400_000)] == [
        "-",
        "5 s",
        "10 min",
        "3 h",
        "4.6 d",
    ]
