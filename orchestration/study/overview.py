"""The study's parent-run pages: the paper-layout tables the MLflow UI renders and one HTML overview."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from recon.core.privacy import redact


def paper_table_files(summary_dir: Path) -> dict[str, Path]:
    """Table name -> its CSV in the summary folder (the tables ``tables.write_table`` wrote: a CSV
    with Markdown, HTML and LaTeX siblings), paper tables before their delta tables."""
    found = {p.stem: p for p in sorted(summary_dir.glob("*.csv"))
             if all(p.with_suffix(ext).is_file() for ext in (".md", ".html", ".tex"))}
    return dict(sorted(found.items(), key=lambda kv: (kv[0].endswith("_delta"), kv[0])))


def overview_html(study: str, summary_dir: Path) -> str:
    """One self-contained page: every paper table and delta table (their HTML), every plot (inline)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study)}</title><style>"
             "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}h2{margin-top:1.5em}"
             "img{max-width:100%;border:1px solid #ddd}li{font-size:.9em;color:#555}</style></head><body>",
             f"<h1>Study {html.escape(study)}</h1>",
             "<p>Medians over seeds, x100 (the paper's layout). Every file is under <code>summary/</code> "
             "in this run's artifacts; sortable copies of the tables under <code>tables/</code>.</p>"]
    for name, csv in paper_table_files(summary_dir).items():
        page = csv.with_suffix(".html")
        if page.is_file():
            parts += [f"<h2>{html.escape(name)}</h2>", page.read_text(encoding="utf-8")]
    for plot in sorted(summary_dir.glob("*.png")):
        data = base64.b64encode(plot.read_bytes()).decode()
        parts += [f"<h2>{html.escape(plot.stem)}</h2>", f"<img alt='{html.escape(plot.name)}' src='data:image/png;base64,{data}'>"]
    parts.append("</body></html>")
    return redact("\n".join(parts))


