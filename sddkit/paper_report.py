"""The reproduction's report as one self-contained HTML page (figures inlined) and its Markdown twin (figures
beside it). The report is a dict: ``title``; ``meta`` (label, value) pairs; ``statements`` (study, figure,
statement, criterion, numbers, verdict); ``studies`` (name, figure, about, readoffs, images [(file, caption,
PNG)], landmarks (rows of ``LANDMARK_COLUMNS``), curves); ``config`` (key, value) pairs; ``deviations``."""
from __future__ import annotations

import base64
import html

VERDICT_COLOURS = {"holds": "#d3edd3", "does not hold": "#f6cfc9", "cannot tell": "#f3e6b5"}
STATEMENT_COLUMNS = {"study": "study", "statement": "the paper says", "criterion": "criterion",
                     "numbers": "our numbers (mean ± std over seeds)", "verdict": "verdict"}
LANDMARK_COLUMNS = {"curve": "curve", "n": "seeds", "dense": "dense %", "minimum": "minimum % (sparsity)",
                    "peak": "peak % (sparsity)", "last": "last %", "threshold": "interpolation threshold",
                    "dip": "dip", "rise": "rise"}
FIGURES = "figures"  # the Markdown twin's folder of PNGs

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1300px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .35em .6em; vertical-align: top; text-align: left; }
th { background: #f4f4f4; } td.verdict { font-weight: bold; white-space: nowrap; }
table.meta td:first-child { font-weight: bold; white-space: nowrap; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.summary span { display: inline-block; padding: .2em .7em; margin-right: .5em; border-radius: 3px; }
code { background: #f4f4f4; padding: 0 .2em; }
.small { font-size: .85em; color: #555; }
"""


def counts(report: dict) -> dict[str, int]:
    out = {v: 0 for v in VERDICT_COLOURS}
    for s in report["statements"]:
        out[s["verdict"]] += 1
    return out


# ---------------------------------------------------------------- HTML

def to_html(report: dict) -> str:
    e = html.escape
    summary = "".join(f"<span style='background:{VERDICT_COLOURS[v]}'>{n} {e(v)}</span>"
                      for v, n in counts(report).items())
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{e(report['title'])}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{e(report['title'])}</h1>",
             f"<p class='summary'>{summary}</p>",
             html_table([{"label": k, "value": v} for k, v in report["meta"]], {"label": "", "value": ""}, "meta",
                        header=False),
             "<h2>The paper's statements</h2>", html_statements(report["statements"])]
    for study in report["studies"]:
        parts += [f"<h2 id='{e(study['name'])}'>Study <code>{e(study['name'])}</code></h2>",
                  f"<p><b>Mirrors:</b> {e(study['figure'])}.<br>{e(study['about'])}<br>"
                  f"<span class='small'>{e(study['readoffs'])}</span></p>"]
        for _, caption, png in study["images"]:
            data = base64.b64encode(png).decode()
            parts.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption class='small'>{e(caption)}</figcaption></figure>")
        parts.append(html_table(study["landmarks"], LANDMARK_COLUMNS))
        curves = [{"curve": c, "values": ", ".join(f"{k}={v}" for k, v in values.items()) or "(the base config)"}
                  for c, values in study["curves"].items()]
        parts.append("<p class='small'>Curves, over the base config below:</p>" +
                     html_table(curves, {"curve": "curve", "values": "config values"}))
    parts += ["<h2>Where the preset departs from the paper</h2>",
              "<ul>" + "".join(f"<li>{e(d)}</li>" for d in report["deviations"]) + "</ul>"
              if report["deviations"] else "<p>The preset lists no deviations.</p>",
              "<h2>The base config</h2>",
              f"<details><summary>{len(report['config'])} keys: the preset with --params and --set; each study's "
              f"curves set their own keys over it</summary>",
              html_table([{"key": k, "value": v} for k, v in report["config"]], {"key": "key", "value": "value"}),
              "</details></body></html>\n"]
    return "\n".join(parts)


def html_statements(statements: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in STATEMENT_COLUMNS.values())
    rows = []
    for s in statements:
        cells = [f"<a href='#{html.escape(s['study'])}'>{html.escape(s['study'])}</a>",
                 *(html.escape(str(s[k])) for k in ("statement", "criterion", "numbers"))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) +
                    f"<td class='verdict' style='background:{VERDICT_COLOURS[s['verdict']]}'>"
                    f"{html.escape(s['verdict'])}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def html_table(rows: list[dict], columns: dict[str, str], css: str = "", header: bool = True) -> str:
    head = ("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in columns.values()) + "</tr>") if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k in columns) + "</tr>"
                   for r in rows)
    return f"<table class='{css}'>{head}{body}</table>"


# ---------------------------------------------------------------- Markdown

def to_markdown(report: dict) -> str:
    lines = [f"# {report['title']}", "", " · ".join(f"**{n}** {v}" for v, n in counts(report).items()), ""]
    lines += [f"- **{k}**: {v}" for k, v in report["meta"]] + ["", "## The paper's statements", ""]
    lines += md_table(report["statements"], STATEMENT_COLUMNS)
    for study in report["studies"]:
        lines += ["", f"## Study `{study['name']}`", "", f"**Mirrors:** {study['figure']}. {study['about']}", "",
                  f"*{study['readoffs']}*", ""]
        lines += [f"![{caption}]({FIGURES}/{name})" for name, caption, _ in study["images"]] + [""]
        lines += md_table(study["landmarks"], LANDMARK_COLUMNS) + [""]
        lines += [f"- `{c}`: " + (", ".join(f"{k}={v}" for k, v in values.items()) or "(the base config)")
                  for c, values in study["curves"].items()]
    lines += ["", "## Where the preset departs from the paper", ""]
    lines += [f"- {d}" for d in report["deviations"]] or ["The preset lists no deviations."]
    lines += ["", "## The base config", ""] + md_table([{"key": k, "value": v} for k, v in report["config"]],
                                                       {"key": "key", "value": "value"})
    return "\n".join(lines) + "\n"


def md_table(rows: list[dict], columns: dict[str, str]) -> list[str]:
    def line(texts):
        return "| " + " | ".join(str(t).replace("|", "\\|").replace("\n", " ") for t in texts) + " |"
    return [line(columns.values()), line(["---"] * len(columns)), *(line(r.get(k, "") for k in columns) for r in rows)]


def files(report: dict) -> dict[str, bytes]:
    """report.html, report.md and the figures the Markdown names."""
    out = {"report.html": to_html(report).encode(), "report.md": to_markdown(report).encode()}
    for study in report["studies"]:
        out.update({f"{FIGURES}/{name}": png for name, _, png in study["images"]})
    return out
