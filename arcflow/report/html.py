"""Reports as self-contained HTML pages: inline CSS, SVG and a little inline script, nothing fetched.

* :func:`render_html`: one run's report, with the per-scenario table;
* :func:`render_diff_html`: two runs compared, scenario by scenario;
* :func:`render_runs_html` and :func:`render_outcome_html`: the viewer's run
  list and one scenario's attempts (``python -m arcflow view``).

The scenario tables sort by any column (click its header), filter by status
(or kind of change) and tag, and search ids and error texts.  In a written
file each scenario's details (output, error, stderr tail, executor) are
embedded in the page and open in a side panel; in the viewer they are a
link to the outcome's own page.  Every text is escaped; embedded details are
JSON read with ``JSON.parse`` and shown with ``textContent``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from .queries import STATUSES, Report, has_epochs, key_label
from .text import FLEET_HEADERS, cell, fleet_rows, pairs, percent

STATUS_COLOURS = {
    "passed": "#2e7d32",
    "failed": "#c62828",
    "error": "#ef6c00",
    "timeout": "#6a1b9a",
    "cancelled": "#757575",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;color:#222;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.2rem .7rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#666}
.legend span{display:inline-block;margin-right:1rem}.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
svg text{font:11px system-ui,sans-serif;fill:#444}
nav{margin-bottom:1rem}nav a{margin-right:1rem}
.s-passed{color:#2e7d32}.s-failed,.s-regressed{color:#c62828}.s-error{color:#ef6c00}.s-timeout{color:#6a1b9a}.s-cancelled,.s-missing{color:#757575}.s-fixed{color:#2e7d32;font-weight:600}.s-new{color:#1565c0}
.scn .controls{display:flex;gap:.8rem;align-items:center;flex-wrap:wrap;margin:.5rem 0}
.scn input[type=search]{min-width:16rem}
.scn th{cursor:pointer;user-select:none;white-space:nowrap}.scn th[aria-sort=ascending]::after{content:" \\25B2"}.scn th[aria-sort=descending]::after{content:" \\25BC"}
.scn tbody tr[data-detail]{cursor:pointer}.scn tbody tr:hover{background:#f5f8ff}
.scn td.err{max-width:28rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;color:#555}
#detail{position:fixed;top:0;right:0;bottom:0;width:min(46rem,92vw);overflow:auto;background:#fff;box-shadow:-4px 0 16px rgba(0,0,0,.2);padding:1rem 1.2rem;z-index:10}
#detail h3{margin:.2rem 0 .6rem}#detail h4{margin:1rem 0 .3rem;font-size:1rem;border-bottom:1px solid #eee}
pre{background:#f6f6f6;padding:.6rem;overflow:auto;max-height:30rem;white-space:pre-wrap;word-break:break-word;margin:.2rem 0}
dl.fields{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:.3rem 0}dl.fields dt{color:#666}dl.fields dd{margin:0}
"""

# The scenario tables' behaviour: sort, filter, search; the detail panel of a written file.
_JS = """
(()=>{
const q=(s,e=document)=>e.querySelector(s);
for(const box of document.querySelectorAll('.scn')){
  const t=q('table',box),body=t.tBodies[0],rows=[...body.rows];
  const st=q('.f-status',box),tg=q('.f-tag',box),sr=q('.f-search',box),n=q('.f-count',box);
  const apply=()=>{const s=st.value,g=tg.value,w=sr.value.trim().toLowerCase();let k=0;
    for(const r of rows){const ok=(!s||r.dataset.status===s)&&(!g||JSON.parse(r.dataset.tags).includes(g))&&(!w||r.dataset.search.includes(w));
      r.hidden=!ok;if(ok)k++;}
    n.textContent=k+' of '+rows.length+' shown';};
  for(const [e,k] of [[st,'change'],[tg,'change'],[sr,'input'],[sr,'change']])e.addEventListener(k,apply);
  const heads=[...t.tHead.rows[0].cells];
  heads.forEach((th,i)=>{th.tabIndex=0;
    const go=()=>{const asc=th.getAttribute('aria-sort')!=='ascending';
      heads.forEach(h=>h.removeAttribute('aria-sort'));th.setAttribute('aria-sort',asc?'ascending':'descending');
      const key=r=>{const c=r.cells[i];if(c.dataset.v===undefined)return c.textContent;return c.dataset.v===''?null:Number(c.dataset.v);};
      rows.sort((a,b)=>{const x=key(a),y=key(b);if(x===y)return 0;if(x===null)return 1;if(y===null)return -1;
        const d=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y),undefined,{numeric:true});
        return asc?d:-d;});
      for(const r of rows)body.appendChild(r);};
    th.addEventListener('click',go);th.addEventListener('keydown',e=>{if(e.key==='Enter')go();});});
  apply();
}
const data=q('#arcflow-details');if(!data)return;
const details=JSON.parse(data.textContent),panel=q('#detail'),inner=q('#detail-body');
const el=(tag,text,cls)=>{const e=document.createElement(tag);if(text!==undefined)e.textContent=text;if(cls)e.className=cls;return e;};
const show=i=>{const d=details[i];if(!d)return;inner.replaceChildren(el('h3',d.title));
  for(const s of d.sections){if(s.heading)inner.append(el('h4',s.heading));
    const dl=el('dl',undefined,'fields');for(const [k,v] of s.fields){dl.append(el('dt',k),el('dd',v));}inner.append(dl);
    for(const [k,v] of s.blocks){inner.append(el('h4',k),el('pre',v));}}
  panel.hidden=false;panel.dataset.shown=String(i);q('#detail-close').focus();};
const hide=()=>{panel.hidden=true;};
document.addEventListener('click',e=>{if(e.target.closest('#detail'))return;const r=e.target.closest('tr[data-detail]');
  if(r){e.preventDefault();show(r.dataset.detail);history.replaceState(null,'','#scenario-'+r.dataset.detail);}});
q('#detail-close').addEventListener('click',hide);
document.addEventListener('keydown',e=>{if(e.key==='Escape')hide();});
const m=/^#scenario-(\\d+)$/.exec(location.hash);if(m)show(m[1]);
})();
"""


def _page(title: str, body: Sequence[str], *, script: bool = False) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        *body,
    ]
    if script:
        parts.append(f"<script>{_JS}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- the scenario table ------------------------------------------------------------------------------


@attrs.frozen
class Cell:
    """One cell of a scenario table: its text, how it sorts, and an optional link."""

    text: str
    #: A number sorts numerically (None: empty, sorts last); a str cell sorts by its text.
    sort: float | str | None = ""
    href: str | None = None
    cls: str = ""

    @classmethod
    def of(cls, value: Any, *, href: str | None = None, status: bool = False) -> Cell:
        """A cell for ``value``: numbers sort as numbers, a status is coloured."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(cell(value), sort=float(value), href=href, cls="n")
        css = f"s-{value}" if status and value else ""
        return cls("-" if value is None else str(value), href=href, cls=css)

    @classmethod
    def number(cls, value: float | None, text: str | None = None) -> Cell:
        return cls(text if text is not None else cell(value), sort=value, cls="n")

    def render(self) -> str:
        attrs_ = f' class="{self.cls}"' if self.cls else ""
        if not isinstance(self.sort, str):
            attrs_ += f' data-v="{"" if self.sort is None else repr(float(self.sort))}"'
        text = html.escape(self.text)
        if self.href is not None:
            text = f'<a href="{html.escape(self.href)}">{text}</a>'
        return f"<td{attrs_}>{text}</td>"


@attrs.frozen
class Row:
    """One scenario of a table: its cells and what the filters and search read."""

    cells: Sequence[Cell]
    status: str
    tags: Sequence[str]
    search: str
    #: Index into the page's embedded details (a written file), or None (links instead).
    detail: int | None = None


def scenario_table(
    label: str,
    headers: Sequence[tuple[str, bool]],
    rows: Sequence[Row],
    *,
    kinds: Sequence[str],
    note: str = "",
) -> str:
    """A sortable, filterable, searchable table; ``headers`` are ``(title, numeric)``."""
    e = html.escape
    present = {r.status for r in rows}
    tags = sorted({t for r in rows for t in r.tags})
    status_opts = "".join(
        f'<option value="{e(k)}">{e(k)}</option>'
        for k in [*kinds, *sorted(present - set(kinds))]
        if k in present
    )
    tag_opts = "".join(f'<option value="{e(t)}">{e(t)}</option>' for t in tags)
    head = "".join(f"<th{' class=n' if num else ''}>{e(h)}</th>" for h, num in headers)
    body = []
    for r in rows:
        detail = f' data-detail="{r.detail}"' if r.detail is not None else ""
        body.append(
            f'<tr data-status="{e(r.status)}" data-tags="{e(json.dumps(list(r.tags)))}" '
            f'data-search="{e(r.search.lower())}"{detail}>'
            + "".join(c.render() for c in r.cells)
            + "</tr>"
        )
    return (
        f'<div class="scn" aria-label="{e(label)}"><div class="controls">'
        f'<label>status <select class="f-status"><option value="">all</option>{status_opts}</select></label>'
        f'<label>tag <select class="f-tag"><option value="">all</option>{tag_opts}</select></label>'
        f'<input type="search" class="f-search" placeholder="search ids and errors" aria-label="search">'
        f'<span class="f-count muted"></span>{f"<span class=muted>{e(note)}</span>" if note else ""}</div>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _details_script(details: Sequence[Mapping[str, Any]]) -> str:
    data = json.dumps(list(details), separators=(",", ":"), default=str)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        f'<script type="application/json" id="arcflow-details">{data}</script>'
        '<aside id="detail" hidden tabindex="-1" aria-label="scenario details">'
        '<button type="button" id="detail-close">close</button><div id="detail-body"></div></aside>'
    )


# -- what one outcome shows -----------------------------------------------------------------------------


def split_stderr(message: str | None, executor: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(error message, stderr tail)``: the executor's ``stderr_tail`` if it has one, else the
    tail the process and modal executors append to the message after ``; stderr:``."""
    message = message or ""
    tail = ""
    if executor:
        for key in ("stderr_tail", "stderr"):
            if isinstance(executor.get(key), str):
                tail = executor[key]
                break
    if not tail and "; stderr:\n" in message:
        message, tail = message.split("; stderr:\n", 1)
    return message, tail


def _json_text(text: str | None, *, cut: int | None = None) -> str:
    """Stored JSON text pretty-printed; text cut short by the query shown as it is."""
    if text is None:
        return ""
    try:
        value = json.loads(text)
    except ValueError:
        return text + (f"\n[... cut at {cut:,} characters]" if cut and len(text) >= cut else "")
    return json.dumps(value, indent=2, ensure_ascii=False)


def _executor_dict(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def outcome_section(
    row: Mapping[str, Any], *, heading: str | None = None, cut: int | None = None
) -> dict[str, Any]:
    """One outcome as ``{"heading", "fields": [[k, v]], "blocks": [[k, text]]}`` (panel or page)."""
    if row.get("status") is None:
        return {"heading": heading, "fields": [["status", "no outcome in this run"]], "blocks": []}
    executor = _executor_dict(row.get("executor"))
    message, tail = split_stderr(row.get("error_message"), executor)
    fields = [
        ["status", str(row["status"])],
        ["score", cell(row.get("score"))],
        [
            "attempt",
            f"{row.get('attempt')}"
            + (f" of {row['attempts']}" if row.get("attempts") else "")
            + ("" if row.get("final", True) else " (not final)"),
        ],
    ]
    if row.get("duration_ms") is not None:
        fields.append(["duration", f"{cell(row['duration_ms'])} ms"])
    for key in ("started_at", "finished_at", "worker"):
        if row.get(key):
            fields.append([key.replace("_", " "), cell(row[key])])
    fields.append(["tags", ", ".join(row.get("tags") or []) or "-"])
    if row.get("error_type"):
        fields.append(["error type", str(row["error_type"])])
    blocks = []
    if message:
        blocks.append(["error", message])
    if tail:
        blocks.append(["stderr tail", tail])
    blocks.append(["output", _json_text(row.get("output"), cut=cut) or "null"])
    if executor:
        blocks.append(["executor", json.dumps(executor, indent=2, ensure_ascii=False)])
    return {"heading": heading, "fields": fields, "blocks": blocks}


def _section_html(section: Mapping[str, Any]) -> str:
    e = html.escape
    parts = [f"<h2>{e(section['heading'])}</h2>"] if section.get("heading") else []
    parts.append(
        '<dl class="fields">'
        + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in section["fields"])
        + "</dl>"
    )
    for k, v in section["blocks"]:
        parts.append(f"<h3>{e(k)}</h3><pre>{e(v)}</pre>")
    return "\n".join(parts)


# -- one run -----------------------------------------------------------------------------------------

#: Scenario id -> the href of its outcome page (the viewer), or None: details embedded.
Linker = Callable[[str], str]


def render_html(
    report: Report,
    scenarios: Sequence[Mapping[str, Any]] | None = None,
    *,
    link: Linker | None = None,
    nav: Sequence[tuple[str, str]] = (),
    detail_chars: int | None = 4000,
) -> str:
    """The report as one self-contained page; ``scenarios`` (from
    :func:`~arcflow.report.queries.scenario_rows`) add the per-scenario table,
    with details embedded, or linked with ``link``; ``detail_chars`` is where
    the query cut long texts (an output cut there is marked so)."""
    r, e = report, html.escape
    rate = r.totals["pass_rate"]
    parts = [_nav(nav)] if nav else []
    parts += [
        f"<h1>arcflow run {e(str(r.run['run_id']))}</h1>",
        f'<p class="muted">suite {e(str(r.run["suite"] or "-"))} · executor {e(str(r.run["executor"] or "-"))} · '
        f"status {e(str(r.run['status']))} · started {e(cell(r.run['started_at']))} · "
        f"finished {e(cell(r.run['finished_at']))}</p>",
        f"<p><strong>pass rate {e(percent(rate))}</strong>: {r.totals['passed']:,} of "
        f"{r.totals['scenarios_with_outcome']:,} scenarios passed; {r.totals['attempts']:,} attempts; "
        f"{r.totals['dead_letters']:,} dead letters.</p>",
        "<h2>Status</h2>",
        _status_svg(r.by_status),
        _html_table(("status", "scenarios"), list(r.by_status.items())),
    ]
    details: list[dict[str, Any]] = []
    if scenarios is not None:
        total = r.totals["scenarios_with_outcome"]
        note = (
            f"the first {len(scenarios):,} of {total:,} scenarios (not passed first)"
            if len(scenarios) < total
            else ""
        )
        rows = []
        epochs = has_epochs(scenarios)
        for i, s in enumerate(scenarios):
            sid = str(s["scenario_id"])
            label = key_label(s, epochs=epochs)
            message, _ = split_stderr(s.get("error_message"), None)
            if link is None:
                title = f"scenario {label} · run {r.run['run_id']}"
                details.append({"title": title, "sections": [outcome_section(s, cut=detail_chars)]})
            if link is None:
                href = f"#scenario-{i}"
            else:
                href = link(sid) + (f"#epoch-{s['epoch']}" if epochs else "")
            error = f"{s['error_type']}: {message}" if s.get("error_type") else message
            rows.append(
                Row(
                    cells=[
                        Cell(label, href=href),
                        Cell.of(s["status"], status=True),
                        Cell.number(s.get("score")),
                        Cell.number(s["attempts"]),
                        Cell.number(s.get("duration_ms")),
                        Cell(", ".join(s["tags"])),
                        Cell(error.splitlines()[0] if error else "", cls="err"),
                    ],
                    status=str(s["status"]),
                    tags=s["tags"],
                    search=f"{label} {s.get('error_type') or ''} {s.get('error_message') or ''}",
                    detail=i if link is None else None,
                )
            )
        parts += [
            "<h2>Scenarios</h2>",
            scenario_table(
                "scenarios",
                [
                    ("scenario", False),
                    ("status", False),
                    ("score", True),
                    ("attempts", True),
                    ("duration ms", True),
                    ("tags", False),
                    ("error", False),
                ],
                rows,
                kinds=STATUSES,
                note=note,
            ),
        ]
    if r.epochs and r.epochs.get("scenarios"):
        ep = r.epochs
        parts += [
            "<h2>Across epochs</h2>",
            f"<p>{ep['scenarios']:,} scenarios, {ep['epochs_min']}"
            + (f"-{ep['epochs_max']}" if ep["epochs_max"] != ep["epochs_min"] else "")
            + f" epochs each; consistent (passed every epoch or none) {e(percent(ep['consistent']))}; "
            f"{ep['flaky_scenarios']:,} passed in some epochs and not others"
            + (
                f"; mean score {ep['mean_score']:.4g}, mean variance across epochs "
                f"{ep['mean_score_variance']:.4g}"
                if ep.get("mean_score") is not None
                else ""
            )
            + ".</p>",
            _html_table(
                ("k", "pass@k (any of k passes)", "pass^k (all k pass)"),
                [
                    [k, percent(ep["pass_at_k"][k]), percent(ep["pass_all_k"][k])]
                    for k in ep["pass_at_k"]
                ],
            ),
        ]
        if ep.get("least_consistent"):
            parts += [
                "<h3>Least consistent scenarios</h3>",
                _html_table(
                    ("scenario", "epochs", "passed", "mean score", "score stddev"),
                    [
                        [
                            v["scenario_id"],
                            v["epochs"],
                            v["passed"],
                            v["mean_score"],
                            v["score_stddev"],
                        ]
                        for v in ep["least_consistent"]
                    ],
                ),
            ]
    if r.fleet:
        parts += [
            "<h2>Workers</h2>",
            f"<p>A shared run (lease {r.fleet['lease_s']:g} s); claims: "
            f"{e(', '.join(f'{n:,} {k}' for k, n in r.fleet['claims'].items()) or 'none')}.</p>",
            _html_table(FLEET_HEADERS, fleet_rows(r.fleet)),
        ]
    usage = r.usage
    if usage.get("input_tokens") or usage.get("output_tokens") or usage.get("cost_usd"):
        parts.append(
            f"<p>Usage over every attempt: {usage['input_tokens']:,} tokens in, "
            f"{usage['output_tokens']:,} out, ${usage['cost_usd']:,.4f}.</p>"
        )
    parts += ["<h2>Throughput</h2>", _throughput_svg(r.throughput)]
    if r.by_tag:
        parts += [
            "<h2>By tag</h2>",
            _html_table(
                ("tag", "scenarios", *STATUSES, "pass rate"),
                [
                    [t["tag"], t["scenarios"], *(t[s] for s in STATUSES), percent(t["pass_rate"])]
                    for t in r.by_tag
                ],
            ),
        ]
    if r.slowest:
        parts += [
            "<h2>Slowest attempts</h2>",
            _html_table(
                ("scenario", "attempt", "status", "duration ms"),
                [
                    [s["scenario_id"], s["attempt"], s["status"], s["duration_ms"]]
                    for s in r.slowest
                ],
            ),
        ]
    parts.append("<h2>Errors by type</h2>")
    parts.append(
        _html_table(
            ("type", "attempts", "scenarios", "example scenario", "example message"),
            [
                [
                    x["error_type"],
                    x["attempts"],
                    x["scenarios"],
                    x["example_scenario"],
                    x["example_message"],
                ]
                for x in r.errors
            ],
        )
        if r.errors
        else "<p>none</p>"
    )
    b = r.batches
    parts += [
        "<h2>Batches</h2>",
        _html_table(
            (
                "batches",
                "rows inserted",
                "records sent",
                "min size",
                "mean size",
                "max size",
                "span s",
                "rows/s",
            ),
            [
                [
                    b["batches"],
                    b["inserted"],
                    b["records"],
                    b["min_size"],
                    b["mean_size"],
                    b["max_size"],
                    b["span_s"],
                    b["rows_per_s"],
                ]
            ],
        ),
        f'<p class="muted">by reason: {e(pairs(b["by_reason"]))}; by source: {e(pairs(b["by_source"]))}</p>',
    ]
    if details:
        parts.append(_details_script(details))
    return _page(f"arcflow report {r.run['run_id']}", parts, script=scenarios is not None)


def _nav(links: Sequence[tuple[str, str]]) -> str:
    return (
        "<nav>"
        + "".join(f'<a href="{html.escape(h)}">{html.escape(t)}</a>' for t, h in links)
        + "</nav>"
    )


# -- two runs ----------------------------------------------------------------------------------------

#: ``(side, scenario id) -> href`` of one side's outcome page (side "a" or "b"), and the runs' pages.
DiffLinker = Callable[[str, str], str]


def render_diff_html(
    diff: Any,
    *,
    link: DiffLinker | None = None,
    run_link: Callable[[str], str] | None = None,
    nav: Sequence[tuple[str, str]] = (),
) -> str:
    """Two runs compared, as one page: the summary, by tag, and the scenario table.

    With ``link`` (the viewer) each row links to both sides' outcome pages;
    without (a written file) both sides' details are embedded in the page.
    """
    from .diff import BY_TAG_HEADERS, CHANGES, by_tag_rows, p_text, points

    e = html.escape
    s, pr, pa = diff.summary, diff.pass_rate, diff.paired
    a_id, b_id = str(diff.run_a["run_id"]), str(diff.run_b["run_id"])

    def run_ref(run_id: str) -> str:
        if run_link is None:
            return e(run_id)
        return f'<a href="{e(run_link(run_id))}">{e(run_id)}</a>'

    parts = [_nav(nav)] if nav else []
    parts += [
        f"<h1>arcflow diff {e(a_id)} → {e(b_id)}</h1>",
        "<table><thead><tr><th></th><th>run</th><th>status</th><th>suite</th>"
        '<th class="n">scenarios</th><th class="n">passed</th><th class="n">pass rate</th></tr></thead><tbody>'
        + "".join(
            f"<tr><td>{side}</td><td>{run_ref(str(info['run_id']))}</td><td>{e(str(info['status']))}</td>"
            f'<td>{e(str(info["suite"] or "-"))}</td><td class="n">{s["scenarios_" + k]:,}</td>'
            f'<td class="n">{s["passed_" + k]:,}</td><td class="n">{e(percent(pr[k]))}</td></tr>'
            for side, k, info in (("A", "a", diff.run_a), ("B", "b", diff.run_b))
        )
        + "</tbody></table>",
        f"<p><strong>pass rate {e(points(pr['delta']))}</strong>; over the {pa['scenarios']:,} scenarios in both: "
        f"{e(percent(pa['pass_rate_a']))} → {e(percent(pa['pass_rate_b']))}, "
        f"{pa['b']:,} regressed, {pa['c']:,} fixed, exact McNemar p = {e(p_text(pa['p_value']))}.</p>",
        '<p class="summary">'
        + " · ".join(f'<span class="s-{c}">{s[c]:,} {c}</span>' for c in CHANGES)
        + "</p>",
    ]
    if s["scored_pairs"]:
        parts.append(
            f'<p class="muted">scores: mean {e(cell(s["mean_score_a"]))} → {e(cell(s["mean_score_b"]))} '
            f"over {s['scored_pairs']:,} scored pairs ({s['scores_up']:,} up, {s['scores_down']:,} down)</p>"
        )
    if diff.by_tag:
        parts += [
            "<h2>By tag</h2>",
            _html_table(BY_TAG_HEADERS, by_tag_rows(diff.by_tag)),
        ]
    rows, details = [], []
    epochs = has_epochs(diff.scenarios)
    for i, r in enumerate(diff.scenarios):
        sid = str(r["scenario_id"])
        label = key_label(r, epochs=epochs)
        anchor = f"#epoch-{r['epoch']}" if epochs else ""
        side_a = _side(r, "a")
        side_b = _side(r, "b")
        if link is None:
            details.append(
                {
                    "title": f"scenario {label}: {r['change']}",
                    "sections": [
                        outcome_section(side_a, heading=f"A: {a_id}"),
                        outcome_section(side_b, heading=f"B: {b_id}"),
                    ],
                }
            )
        err_side = r["error_message_b"] if r["status_b"] is not None else r["error_message_a"]
        err_type = r["error_type_b"] if r["status_b"] is not None else r["error_type_a"]
        message, _ = split_stderr(err_side, None)
        error = f"{err_type}: {message}" if err_type else message
        rows.append(
            Row(
                cells=[
                    Cell(label, href=f"#scenario-{i}" if link is None else None),
                    Cell.of(r["change"], status=True),
                    Cell.of(
                        r["status_a"],
                        status=True,
                        href=link("a", sid) + anchor
                        if link is not None and r["status_a"]
                        else None,
                    ),
                    Cell.of(
                        r["status_b"],
                        status=True,
                        href=link("b", sid) + anchor
                        if link is not None and r["status_b"]
                        else None,
                    ),
                    Cell.number(r["score_a"]),
                    Cell.number(r["score_b"]),
                    Cell.number(
                        r["score_delta"],
                        None if r["score_delta"] is None else f"{r['score_delta']:+.4g}",
                    ),
                    Cell(", ".join(r["tags"])),
                    Cell(error.splitlines()[0] if error else "", cls="err"),
                ],
                status=str(r["change"]),
                tags=r["tags"],
                search=f"{label} {err_type or ''} {err_side or ''}",
                detail=i if link is None else None,
            )
        )
    listed = "every scenario" if diff.all else "the scenarios that changed"
    parts += [
        "<h2>Scenarios</h2>",
        f'<p class="muted">{listed}; {"click a row for both sides" if link is None else "the statuses link to each side"}</p>',
        scenario_table(
            "diff scenarios",
            [
                ("scenario", False),
                ("change", False),
                ("A", False),
                ("B", False),
                ("score A", True),
                ("score B", True),
                ("score change", True),
                ("tags", False),
                ("error", False),
            ],
            rows,
            kinds=CHANGES,
        ),
    ]
    if details:
        parts.append(_details_script(details))
    return _page(f"arcflow diff {a_id} → {b_id}", parts, script=True)


def _side(row: Mapping[str, Any], side: str) -> dict[str, Any]:
    return {
        "status": row[f"status_{side}"],
        "score": row[f"score_{side}"],
        "attempt": row[f"attempt_{side}"],
        "tags": row["tags"],
        "error_type": row[f"error_type_{side}"],
        "error_message": row[f"error_message_{side}"],
        "output": row[f"output_{side}"],
    }


# -- the viewer's other pages --------------------------------------------------------------------------


def render_runs_html(
    runs: Sequence[Mapping[str, Any]],
    *,
    run_link: Callable[[str], str],
    diff_action: str,
) -> str:
    """The run listing with links to each report, and a form comparing two runs."""
    e = html.escape
    rows = []
    for i, r in enumerate(runs):
        done = r["done"]
        rate = r["passed"] / done if done else None
        rows.append(
            "<tr>"
            f'<td><input type="radio" name="a" value="{e(r["run_id"])}"{" checked" if i == 1 else ""} aria-label="A"></td>'
            f'<td><input type="radio" name="b" value="{e(r["run_id"])}"{" checked" if i == 0 else ""} aria-label="B"></td>'
            f'<td><a href="{e(run_link(str(r["run_id"])))}">{e(str(r["run_id"]))}</a></td>'
            f"<td>{e(str(r['suite'] or '-'))}</td><td>{e(str(r['status']))}</td>"
            f"<td>{e(cell(r['started_at']))}</td>"
            f'<td class="n">{e(cell(done))}</td><td class="n">{e(cell(r["passed"]))}</td>'
            f'<td class="n">{e(percent(rate))}</td>'
            "</tr>"
        )
    table = (
        f'<form method="get" action="{e(diff_action)}">'
        "<table><thead><tr><th>A</th><th>B</th><th>run</th><th>suite</th><th>status</th>"
        '<th>started</th><th class="n">scenarios</th><th class="n">passed</th><th class="n">pass rate</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<button type="submit">compare A → B</button></form>'
        if rows
        else "<p>no runs yet</p>"
    )
    return _page("arcflow runs", ["<h1>arcflow runs</h1>", table])


def render_outcome_html(
    run_id: str,
    scenario_id: str,
    attempts: Sequence[Mapping[str, Any]],
    *,
    nav: Sequence[tuple[str, str]] = (),
) -> str:
    """Every attempt of one scenario in one run: per epoch, the concluding one first."""
    e = html.escape
    ordered = sorted(attempts, key=lambda a: (a.get("epoch") or 1, not a["final"], -a["attempt"]))
    epochs = has_epochs(attempts)
    body = [_nav(nav)] if nav else []
    body.append(f"<h1>scenario {e(scenario_id)}</h1>")
    body.append(f'<p class="muted">run {e(run_id)} · {len(attempts)} attempt(s)</p>')
    seen: set[int] = set()
    for a in ordered:
        epoch = a.get("epoch") or 1
        first = epoch not in seen
        seen.add(epoch)
        heading = (f"epoch {epoch} · " if epochs else "") + f"attempt {a['attempt']}"
        heading += " (the run's conclusion)" if first else ""
        anchor = f' id="epoch-{epoch}"' if first else ""
        section = _section_html(outcome_section(a, heading=heading))
        body.append(f'<section class="attempt"{anchor}>{section}</section>')
    return _page(f"arcflow {run_id} {scenario_id}", body)


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cls(v: Any) -> str:
        return ' class="n"' if isinstance(v, int | float) and not isinstance(v, bool) else ""

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{cls(v)}>{html.escape(cell(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status_svg(by_status: Mapping[str, int], width: int = 600, height: int = 28) -> str:
    """A horizontal stacked bar of the status breakdown, with a legend."""
    total = sum(by_status.values())
    rects, x = [], 0.0
    for status, n in by_status.items():
        if not n:
            continue
        w = width * n / total
        colour = STATUS_COLOURS.get(status, "#999")
        rects.append(
            f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="{height}" fill="{colour}">'
            f"<title>{html.escape(status)}: {n:,}</title></rect>"
        )
        x += w
    if not rects:
        rects.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#eee"/>')
    legend = "".join(
        f'<span><i style="background:{STATUS_COLOURS.get(s, "#999")}"></i>{html.escape(s)} {n:,}</span>'
        for s, n in by_status.items()
    )
    return (
        f'<svg role="img" aria-label="status breakdown" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">{"".join(rects)}</svg>'
        f'<div class="legend">{legend}</div>'
    )


def _throughput_svg(
    series: Sequence[Mapping[str, Any]], width: int = 600, height: int = 180
) -> str:
    """Bars of rows written per second, per time bucket."""
    if not series:
        return "<p>no batches written</p>"
    pad_l, pad_b, pad_t = 50, 22, 10
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    rates = [p["rows"] / p["width"] for p in series]
    top = max(rates) or 1.0
    bar_w = plot_w / len(series)
    bars = []
    for i, (p, rate) in enumerate(zip(series, rates, strict=True)):
        h = plot_h * rate / top
        x = pad_l + i * bar_w
        bars.append(
            f'<rect x="{x:.2f}" y="{pad_t + plot_h - h:.2f}" width="{max(bar_w - 1, 0.5):.2f}" height="{h:.2f}" '
            f'fill="#1565c0"><title>t={p["t"]:g}s: {rate:,.1f} rows/s</title></rect>'
        )
    end = series[-1]["t"] + series[-1]["width"]
    axis = (
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 10}" y2="{pad_t + plot_h}" stroke="#888"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 10}" text-anchor="end">{top:,.0f}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end">0</text>'
        f'<text x="{pad_l}" y="{height - 6}">0 s</text>'
        f'<text x="{width - 10}" y="{height - 6}" text-anchor="end">{end:g} s</text>'
        f'<text x="4" y="{pad_t + plot_h / 2}">rows/s</text>'
    )
    return (
        f'<svg role="img" aria-label="throughput over time" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">{axis}{"".join(bars)}</svg>'
    )
