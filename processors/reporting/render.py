"""The auditor's report as a file: JSON, HTML or PDF.

- JSON is the sealed report itself, indented, keys sorted.
- HTML is one self-contained page (``templates/report.html.j2``, autoescaped): inline CSS,
  charts drawn here as inline SVG, no script, no font, no image and no request to anyone;
  its Content-Security-Policy forbids them too, so a value that slipped through could
  still load nothing. The page carries the exact JSON in
  ``<script type="application/json" id="custody-report">``, which
  :func:`embedded_report` reads back, so ``custody report verify`` checks an HTML file as
  it checks the JSON.
- PDF is that HTML printed by headless Chromium, A4.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from processors.reporting.controls import chain_whole
from processors.serving.links import tree_link

FORMATS = ("json", "html", "pdf")
EMBED_OPEN = '<script type="application/json" id="custody-report">'
PDF_TIMEOUT_SECONDS = 180

STATUS_COLOURS = {"EFFECTIVE": "#1a7f37", "EXCEPTIONS": "#cf222e", "NOT_EXERCISED": "#6e7781"}
_MUTED = "#d0d7de"
_INK = "#24292f"


class RenderError(RuntimeError):
    """The report cannot be written in the format asked (no Chromium for a PDF, an unknown
    format), or a file holds no embedded report."""


def render(report: dict[str, Any], fmt: str) -> bytes:
    """The sealed ``report`` as ``fmt``: ``json``, ``html`` or ``pdf``."""
    if fmt == "json":
        return (json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    if fmt == "html":
        return html_of(report).encode()
    if fmt == "pdf":
        return print_pdf(html_of(report))
    raise RenderError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def embedded_report(html: str) -> dict[str, Any]:
    """The report an HTML rendering carries, exactly as it was rendered."""
    start = html.find(EMBED_OPEN)
    if start < 0:
        raise RenderError('no embedded report (<script id="custody-report">) in this HTML')
    start += len(EMBED_OPEN)
    # The embedded JSON holds no "<" (see _script_json): the first "</script" closes it.
    end = html.find("</script", start)
    if end < 0:
        raise RenderError("the embedded report is not closed (no </script>)")
    try:
        found = json.loads(html[start:end])
    except ValueError as exc:
        raise RenderError(f"the embedded report is not JSON: {exc}") from None
    if not isinstance(found, dict):
        raise RenderError("the embedded report is not a JSON object")
    return found


def _script_json(report: dict[str, Any]) -> Markup:
    # Inside a <script> element the HTML parser only looks for "<" ("</script", "<!--");
    # JSON allows "<", ">" and "&" only inside strings, where \u escapes read back the same.
    text = json.dumps(report, sort_keys=True, ensure_ascii=False)
    for char in "<>&":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return Markup(text)  # noqa: S704 (escaped above for a script element, not for HTML)


@lru_cache(maxsize=1)
def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("processors.reporting", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["value"] = value_of
    environment.filters["label"] = label_of
    environment.filters["duration"] = duration
    environment.filters["moment"] = moment
    return environment


def html_of(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    template = _environment().get_template("report.html.j2")
    return template.render(r=report, view=_view(report), embedded=_script_json(report))


# --- what the template shows besides the report's own values -------------------------


def _view(report: dict[str, Any]) -> dict[str, Any]:
    controls = report["controls"]
    explorer = report.get("explorer_url")

    def link(root: str, alert: str | None = None) -> str | None:
        return tree_link(explorer, report["tenant"], root, alert) if explorer else None

    by_framework: dict[str, list[dict[str, Any]]] = {}
    for item in report["frameworks"]:
        by_framework.setdefault(item["framework"], []).append(item)
    return {
        "link": link,
        "status_count": {s: sum(c["status"] == s for c in controls) for s in STATUS_COLOURS},
        "titles": {c["id"]: c["title"] for c in controls},
        "frameworks": by_framework,
        "standing": sum(1 for i in report["inventory"] if i["standing_access"]),
        "charts": {
            "controls": _controls_chart(controls),
            "alert_types": _alert_types_chart(controls),
            "credentials": _credential_charts(controls, report["parameters"]),
            "depth": _depth_chart(report["delegations"]["by_depth"]),
            "meters": {c["id"]: _meters(c["measure"], c["status"]) for c in controls},
        },
        "contiguous": {
            c["producer_instance"]: chain_whole(c) for c in report["evidence"]["chains"]
        },
    }


def label_of(key: str) -> str:
    """A measure's key as a reader says it (its seconds are written as a duration)."""
    return key.removesuffix("_seconds").replace("_", " ").capitalize()


def duration(seconds: Any) -> str:
    """Seconds as a reader reads them: 49 s, 12 min 5 s, 3 h 20 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    total = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if total >= size:
            rest = (total % size) // sub_size
            return f"{total // size} {unit}" + (f" {rest} {sub}" if rest else "")
    if total >= 60:
        return f"{total // 60} min" + (f" {total % 60} s" if total % 60 else "")
    return f"{total} s"


def moment(iso_time: str, precise: bool = False) -> str:
    """An ISO time as a reader reads it: to the second, or as stored when ``precise``."""
    shown = iso_time if precise else iso_time[:19]
    return shown.replace("T", " ").removesuffix("Z") + " UTC"


def value_of(value: Any, key: str = "") -> str:
    """A measure's value: shares as percentages, seconds as durations, counts grouped."""
    if value is None:
        return "— (nothing to measure)" if key.startswith("share_") else "—"
    if key.startswith("share_"):
        return f"{float(value) * 100:.1f} %"
    if key.endswith("_seconds"):
        return f"{duration(value)} ({int(value):,} s)"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return str(value)


# --- charts: inline SVG, sized by viewBox so they scale to the page and to A4 -----------


def _svg(width: int, height: int, title: str, body: Sequence[str], kind: str = "chart") -> Markup:
    return Markup(  # noqa: S704 (every text in body went through escape())
        f'<svg class="{kind}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", fill: str = _INK) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}">{escape(text)}</text>'
    )


def _bars(
    title: str,
    rows: Sequence[tuple[str, float, str, str]],
    label_width: int = 230,
    width: int = 640,
) -> Markup:
    """Horizontal bars: (label, length in [0, 1], colour, the figure written after it)."""
    row_height, top = 22, 4
    track = width - label_width - 110
    body = []
    for i, (label, length, colour, figure) in enumerate(rows):
        y = top + i * row_height
        drawn = max(0.0, min(1.0, length)) * track
        body.append(_text(label_width - 8, y + 14, label, "end"))
        body.append(
            f'<rect x="{label_width}" y="{y + 4}" width="{track}" height="13" '
            f'fill="{_MUTED}" opacity="0.35"/>'
        )
        body.append(
            f'<rect x="{label_width}" y="{y + 4}" width="{drawn:.1f}" height="13" fill="{colour}"/>'
        )
        body.append(_text(label_width + track + 8, y + 14, figure))
    return _svg(width, top * 2 + row_height * len(rows), title, body)


def _controls_chart(controls: Sequence[dict[str, Any]]) -> Markup:
    most = max((len(c["exceptions"]) for c in controls), default=0) or 1
    return _bars(
        "Exceptions by control",
        [
            (
                label_of(c["id"]),
                len(c["exceptions"]) / most,
                STATUS_COLOURS[c["status"]],
                f"{len(c['exceptions']):,} · {c['status'].replace('_', ' ').lower()}",
            )
            for c in controls
        ],
    )


def _alert_types_chart(controls: Sequence[dict[str, Any]]) -> Markup:
    counted = [
        (kind, sum(a["alert_type"] == kind for a in c["exceptions"]))
        for c in controls
        for kind in c["alert_types"]
    ]
    most = max((n for _, n in counted), default=0) or 1
    return _bars(
        "Alerts by type",
        [(kind, n / most, "#bc4c00" if n else _MUTED, f"{n:,}") for kind, n in counted],
    )


def _credential_charts(
    controls: Sequence[dict[str, Any]], parameters: dict[str, Any]
) -> list[tuple[str, Markup]]:
    """Captioned charts: what became of the period's credentials, and how long they lived
    against the longest lifetime the correlator allows (log scale: seconds beside a day)."""
    measure = next(c["measure"] for c in controls if c["id"] == "ephemeral_credentials")
    issued = int(measure["issued"])
    if not issued:
        return []
    revoked, in_grace = int(measure["revoked"]), int(measure["revoked_within_grace"])
    outcome = [
        ("revoked within the grace", in_grace, STATUS_COLOURS["EFFECTIVE"]),
        ("revoked later or task not completed", revoked - in_grace, "#9a6700"),
        ("not revoked", issued - revoked, STATUS_COLOURS["EXCEPTIONS"]),
    ]
    lifetimes = [
        ("Median lifetime", measure["median_lifetime_seconds"], "#0969da"),
        ("Longest lifetime", measure["max_lifetime_seconds"], "#0969da"),
        ("Allowed (max TTL)", parameters["max_ttl"], _MUTED),
    ]
    scale = math.log10(1 + max(int(v or 0) for _, v, _ in lifetimes)) or 1.0
    stacked_title = f"What became of the {issued:,} credentials issued"
    lifetimes_title = "Credential lifetimes against the allowed one (log scale)"
    return [
        (stacked_title, _stacked(stacked_title, outcome)),
        (
            lifetimes_title,
            _bars(
                lifetimes_title,
                [
                    (label, math.log10(1 + int(v or 0)) / scale, colour, duration(v))
                    for label, v, colour in lifetimes
                ],
                label_width=130,
                width=520,
            ),
        ),
    ]


def _stacked(title: str, parts: Sequence[tuple[str, int, str]], width: int = 520) -> Markup:
    total = sum(n for _, n, _ in parts) or 1
    body, x = [], 0.0
    for i, (label, n, colour) in enumerate(parts):
        share = n / total * width
        body.append(f'<rect x="{x:.1f}" y="0" width="{share:.1f}" height="22" fill="{colour}"/>')
        x += share
        y = 34 + i * 20
        body.append(f'<rect x="0" y="{y}" width="12" height="12" fill="{colour}"/>')
        body.append(_text(18, y + 10, f"{label}: {n:,} ({n / total * 100:.1f} %)"))
    return _svg(width, 34 + 20 * len(parts), title, body)


def _depth_chart(by_depth: Sequence[dict[str, Any]]) -> Markup | None:
    if not by_depth:
        return None
    width, height, base, column = 640, 150, 120, 56
    most = max(int(r["delegations"]) for r in by_depth) or 1
    body = []
    for i, row in enumerate(by_depth):
        x = 40 + i * (column + 24)
        tall = int(row["delegations"]) / most * (base - 18)
        depth = "undeclared" if row["depth"] is None else f"depth {row['depth']}"
        colour = "#8250df" if row["depth"] is not None else "#9a6700"
        body.append(
            f'<rect x="{x}" y="{base - tall:.1f}" width="{column}" height="{tall:.1f}" '
            f'fill="{colour}"/>'
        )
        figure = f"{int(row['delegations']):,}"
        body.append(_text(x + column / 2, base - tall - 4, figure, "middle"))
        body.append(_text(x + column / 2, base + 16, depth, "middle"))
    body.append(f'<line x1="30" y1="{base}" x2="{width - 10}" y2="{base}" stroke="{_INK}"/>')
    return _svg(width, height, "Delegations by depth of the delegatee's task", body)


def _meters(measure: dict[str, Any], status: str) -> dict[str, Markup]:
    """A small bar beside each share of a control's measure."""
    colour = STATUS_COLOURS["EFFECTIVE"] if status != "EXCEPTIONS" else "#9a6700"
    meters = {}
    for key, value in measure.items():
        if key.startswith("share_") and value is not None:
            filled = max(0.0, min(1.0, float(value))) * 120
            meters[key] = _svg(
                120,
                10,
                f"{label_of(key)}: {value_of(value, key)}",
                [
                    f'<rect x="0" y="0" width="120" height="10" fill="{_MUTED}"/>',
                    f'<rect x="0" y="0" width="{filled:.1f}" height="10" fill="{colour}"/>',
                ],
                kind="meter",
            )
    return meters


# --- PDF ------------------------------------------------------------------------------


def print_pdf(html: str) -> bytes:
    """``html`` printed to an A4 PDF by headless Chromium."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RenderError(
            "a PDF is printed by headless Chromium, which is not installed: "
            "apt-get install chromium (or write --format html)"
        )
    with tempfile.TemporaryDirectory(prefix="custody-report-") as directory:
        source, target = Path(directory) / "report.html", Path(directory) / "report.pdf"
        source.write_text(html, encoding="utf-8")
        command = [
            chromium,
            "--headless",
            # Chromium's sandbox refuses root and needs user namespaces, which containers
            # rarely grant; the page it prints is ours, with no script and no request.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # A profile of its own: a user's running Chromium holds the default one.
            f"--user-data-dir={Path(directory) / 'profile'}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={target}",
            source.as_uri(),
        ]
        try:
            done = subprocess.run(  # noqa: S603 (a fixed command on our own temporary file)
                command, capture_output=True, timeout=PDF_TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            raise RenderError(
                f"Chromium did not print the PDF within {PDF_TIMEOUT_SECONDS} s"
            ) from None
        except OSError as exc:
            raise RenderError(f"cannot run {chromium}: {exc}") from None
        if done.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise RenderError(
                f"Chromium did not print the PDF (exit {done.returncode}): {' / '.join(said)}"
            )
        return target.read_bytes()
