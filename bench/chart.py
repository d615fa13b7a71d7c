"""Render a results file as a standalone SVG bar chart: our rates next to the references.

Plain SVG text, no plotting library: two panels (draining and enqueueing, jobs/s),
each scaled to its own largest bar, ours in blue and references in grey, so the
ratios the targets speak of can be read off. Every piece of text is escaped.

    python -m bench.chart [bench/results/latest.json] [bench/results/summary.svg]
"""

import html
import json
import sys
from pathlib import Path
from typing import Any

OURS = "#2b6cb0"
REFERENCE = "#a0aec0"
WIDTH = 860
LABEL_W = 330
BAR_W = 400
ROW_H = 26


def _get(results: dict[str, Any], *path: str) -> float | None:
    node: Any = results
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def bars(results: dict[str, Any]) -> list[tuple[str, list[tuple[str, float | None, bool]]]]:
    """The panels: (title, [(label, jobs/s or None, is ours)])."""
    batch = _get(results, "S3", "batch_size")
    return [
        (
            "Draining no-op jobs (jobs/s)",
            [
                (
                    "S1 runjobs, 2 processes (median)",
                    _get(results, "S1", "median_jobs_per_s_draining"),
                    True,
                ),
                (
                    "S1 runjobs, --pool threads, 2 threads",
                    _get(results, "S1", "threads", "runs", "0", "jobs_per_s_draining"),
                    True,
                ),
                (
                    "S5 runjobs with history in the table",
                    _get(results, "S5", "jobs_per_s_draining"),
                    True,
                ),
                (
                    "R3 lean queue, 2 processes, batch 50",
                    _get(results, "R3", "median_jobs_per_s"),
                    False,
                ),
                (
                    "R2 psycopg loop, 2 children, batch 50",
                    _get(results, "R2", "two_children_batch50", "median_jobs_per_s"),
                    False,
                ),
                (
                    "R2 psycopg loop, 1 process, batch 50",
                    _get(results, "R2", "one_process_batch50", "median_jobs_per_s"),
                    False,
                ),
                (
                    "R2 psycopg loop, 1 job per transaction",
                    _get(results, "R2", "one_per_transaction", "median_jobs_per_s"),
                    False,
                ),
                (
                    "R1 pgbench claim+complete, batch 100",
                    _get(results, "R1", "claim_complete_b100", "jobs_per_s"),
                    False,
                ),
                (
                    "R1 pgbench claim+complete, batch 1",
                    _get(results, "R1", "claim_complete_b1", "jobs_per_s"),
                    False,
                ),
            ],
        ),
        (
            "Enqueueing (jobs/s)",
            [
                (
                    "S2 enqueue(), 1 per transaction, 4 threads",
                    _get(results, "S2", "jobs_per_s"),
                    True,
                ),
                (
                    "R1 pgbench enqueue, 1 per transaction",
                    _get(results, "R1", "enqueue_one_per_transaction", "jobs_per_s"),
                    False,
                ),
                (
                    f"S3 enqueue_many, batches of {batch or 0:,.0f}",
                    _get(results, "S3", "jobs_per_s"),
                    True,
                ),
            ],
        ),
    ]


def render(payload: dict[str, Any]) -> str:
    """The SVG document for a results payload (as written by bench/run.py)."""
    results = _with_lists(payload.get("results", {}))
    machine = payload.get("machine", {})
    subtitle = (
        f"{payload.get('mode', '?')} run {payload.get('started_at', '')}, "
        f"{machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model') or 'unknown CPU'}), "
        f"{(machine.get('postgresql') or 'PostgreSQL ?').split(' on ')[0]}"
    )
    parts: list[str] = []
    y = 64
    for title, rows in bars(results):
        present = [(label, value, ours) for label, value, ours in rows if value]
        parts.append(f'<text x="16" y="{y}" class="h">{html.escape(title)}</text>')
        y += 12
        top = max((value for _, value, _ in present), default=1.0)
        for label, value, ours in present:
            width = max(1.0, value / top * BAR_W)
            colour = OURS if ours else REFERENCE
            parts.append(
                f'<text x="{LABEL_W - 8}" y="{y + 17}" class="l">{html.escape(label)}</text>'
                f'<rect x="{LABEL_W}" y="{y + 4}" width="{width:.1f}" height="{ROW_H - 8}" '
                f'fill="{colour}"/>'
                f'<text x="{LABEL_W + width + 6:.1f}" y="{y + 17}" class="v">'
                f"{html.escape(f'{value:,.0f}')}</text>"
            )
            y += ROW_H
        if not present:
            parts.append(f'<text x="{LABEL_W}" y="{y + 17}" class="v">not measured</text>')
            y += ROW_H
        y += 22
    legend_y = y
    parts.append(
        f'<rect x="{LABEL_W}" y="{legend_y}" width="12" height="12" fill="{OURS}"/>'
        f'<text x="{LABEL_W + 18}" y="{legend_y + 11}" class="v">django_jobs</text>'
        f'<rect x="{LABEL_W + 120}" y="{legend_y}" width="12" height="12" fill="{REFERENCE}"/>'
        f'<text x="{LABEL_W + 138}" y="{legend_y + 11}" class="v">'
        "reference (same SQL, same run)</text>"
    )
    height = legend_y + 32
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="system-ui, sans-serif">\n'
        "<style>.t{font-size:18px;font-weight:600}.s{font-size:12px;fill:#4a5568}"
        ".h{font-size:14px;font-weight:600}.l{font-size:12px;text-anchor:end}"
        ".v{font-size:12px;fill:#2d3748}</style>\n"
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>\n'
        '<text x="16" y="26" class="t">django_jobs benchmark: ours vs references</text>\n'
        f'<text x="16" y="44" class="s">{html.escape(subtitle)}</text>\n'
        + "\n".join(parts)
        + "\n</svg>\n"
    )


def _with_lists(results: dict[str, Any]) -> dict[str, Any]:
    """Index lists by position as strings, so _get can walk "runs", "0" paths."""

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: convert(v) for k, v in node.items()}
        if isinstance(node, list):
            return {str(n): convert(v) for n, v in enumerate(node)}
        return node

    return convert(results)


def write_chart(payload: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(payload))
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    results_dir = Path(__file__).resolve().parent / "results"
    source = Path(argv[0]) if argv else results_dir / "latest.json"
    target = Path(argv[1]) if len(argv) > 1 else results_dir / "summary.svg"
    print(write_chart(json.loads(source.read_text()), target))


if __name__ == "__main__":
    main()
