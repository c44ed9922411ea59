"""The report card's raw material: each stage writes one Markdown section under <home>/report/.

A section is `report/<slug>.md` (slug = title lowercased, spaces to dashes), nanochat's format: a `## Title`
heading, a timestamp, then the stage's figures as `- key: value` lines (or raw Markdown such as tables), so a later
`primechat report` can stitch them into one card and parse the numbers back.
"""

import datetime

from primechat.common import atomic_path, home_dir, is_master


def report_dir():
    path = home_dir() / "report"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10000:
        return f"{value:,}"
    return str(value)


def log_section(title: str, *items) -> None:
    """Write (replace) one section; items are dicts (rendered as `- key: value`) or Markdown strings."""
    if not is_master():
        return
    lines = [f"## {title}", f"timestamp: {datetime.datetime.now():%Y-%m-%d %H:%M:%S}", ""]
    for item in items:
        if isinstance(item, dict):
            lines += [f"- {k}: {_format_value(v)}" for k, v in item.items()]
        else:
            lines.append(str(item).rstrip("\n"))
        lines.append("")
    slug = title.lower().replace(" ", "-")
    with atomic_path(report_dir() / f"{slug}.md") as tmp:
        tmp.write_text("\n".join(lines))
