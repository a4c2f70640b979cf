"""Server-rendered HTML of the models view: one stylesheet, no build step.

Every value from the registry or a spec goes through `_e` (HTML escaping)
before it reaches the page: reasons and actors are free text written by
other processes, and a version or run id is only as safe as whoever wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from pipelines.models_view.overview import (
    Champion,
    DecisionEntry,
    DeploymentEntry,
    EventEntry,
    MetricCheck,
    RuleLine,
    VerticalOverview,
)

#: The data docs route of the app, under its prefix; the one place every data docs link is built
#: (`data_docs_href`), so the route can move without hunting for links.
DATA_DOCS_SEGMENT = "docs"


def data_docs_href(view_root: str, vertical: str, page: str = "index.html") -> str:
    """The URL of ``page`` (relative to the vertical's data docs site) as the plugin serves it."""
    return f"{view_root}/{DATA_DOCS_SEGMENT}/{quote(vertical, safe='')}/{quote(page, safe='/')}"


@dataclass(frozen=True)
class Links:
    """Where the page points: the Airflow UI and this view, both as absolute paths.

    Derived per request from where the app is mounted, so the view works
    behind a reverse proxy that serves Airflow under a path prefix.
    """

    #: The Airflow UI's root, ending in "/" (e.g. "/" or "/airflow/").
    ui_root: str
    #: This view's root, without the trailing "/" (e.g. "/models").
    view_root: str

    def dag_run(self, dag_id: str, run_id: str) -> str:
        # Run ids hold ":" and "+" (manual__2026-11-27T00:00:00+00:00): encode every reserved char.
        return f"{self.ui_root}dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    def dag(self, dag_id: str) -> str:
        return f"{self.ui_root}dags/{quote(dag_id, safe='')}"

    def data_docs(self, vertical: str) -> str:
        return data_docs_href(self.view_root, vertical)

    def data_docs_page(self, vertical: str, page: str) -> str:
        """A page of the data docs site, e.g. one date's validation result."""
        return data_docs_href(self.view_root, vertical, page)

    def bucket_version(self, vertical: str, model_version: str) -> str:
        """The version folder of a ``file://`` bucket, served read-only by the plugin."""
        return f"{self.view_root}/bucket/{quote(vertical, safe='')}/{quote(model_version, safe='')}/"

    def model_card(self, vertical: str, model_version: str) -> str:
        return self.bucket_version(vertical, model_version) + "model-card"

    def vertical_page(self, vertical: str) -> str:
        return f"{self.view_root}/verticals/{quote(vertical, safe='')}"

    def api(self, vertical: str | None = None) -> str:
        return f"{self.view_root}/api/verticals" + (f"/{quote(vertical, safe='')}" if vertical else "")


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _when(value: datetime | None) -> str:
    return "—" if value is None else _e(value.strftime("%Y-%m-%d %H:%M UTC"))


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _code(value: str | None) -> str:
    return '<span class="muted">—</span>' if not value else f"<code>{_e(value)}</code>"


def _mark(passed: bool | None) -> str:
    if passed is None:
        return '<span class="mark unknown" title="not scored">?</span>'
    if passed:
        return '<span class="mark pass" title="meets the floor">✓</span>'
    return '<span class="mark fail" title="below the floor">✗</span>'


def _run_link(links: Links, dag_id: str, run_id: str | None) -> str:
    if not run_id:
        return '<span class="muted">—</span>'
    # data-airflow-ui: the script below opens it in the Airflow UI itself when framed.
    return f'<a data-airflow-ui href="{_e(links.dag_run(dag_id, run_id))}" title="{_e(run_id)}">DAG run</a>'


def _actor(actor: str | None, run_id: str | None) -> str:
    """``airflow:<run id>`` reads as "airflow": the run is linked next to it, the id is in the tooltip."""
    if not actor:
        return '<span class="muted">—</span>'
    if run_id and actor.endswith(f":{run_id}"):
        who = actor[: -len(run_id) - 1]
        return f'<span title="{_e(actor)}">{_e(who)}</span>'
    return _e(actor)


def _outcome_badge(outcome: str) -> str:
    return f'<span class="badge {_e(outcome)}">{_e(outcome)}</span>'


# -- fragments ---------------------------------------------------------------


def _checks_table(checks: list[MetricCheck]) -> str:
    if not checks:
        return '<p class="muted">No gate thresholds (spec missing).</p>'
    rows = "".join(
        f"<tr><td>{_e(c.metric)}</td><td class=num>{_num(c.value)}</td>"
        f"<td class=num>≥ {_num(c.threshold)}</td><td class=center>{_mark(c.passed)}</td></tr>"
        for c in checks
    )
    return (
        '<table class="checks"><thead><tr><th>Metric</th><th class=num>Champion</th>'
        f"<th class=num>Gate floor</th><th class=center>Pass</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _champion_block(view: VerticalOverview, champion: Champion | None, links: Links) -> str:
    docs = (
        f'<a href="{_e(links.data_docs(view.name))}">Data docs</a>'
        if view.has_data_docs
        else '<span class="muted">no data docs built yet</span>'
    )
    if champion is None:
        facts = '<p class="muted">No model deployed yet.</p>'
        return f'<div class="card"><h3>Champion</h3>{facts}<p>{docs}</p></div>'
    facts = (
        "<dl>"
        f"<dt>Model version</dt><dd>{_code(champion.model_version)}</dd>"
        f"<dt>Data version</dt><dd>{_code(champion.data_version)}</dd>"
        f"<dt>Trained for</dt><dd>{_e(champion.ds)}</dd>"
        f"<dt>Deployed</dt><dd>{_when(champion.deployed_at)}"
        + (
            f' <span class="muted">by {_actor(champion.deployed_by, champion.deployed_run_id)}</span>'
            if champion.deployed_by
            else ""
        )
        + "</dd>"
        f"<dt>Links</dt><dd>{_run_link(links, view.name, champion.dag_run_id)} · {docs}"
        f"{_validation_link(view, links, view.champion_validation_page, ' · ')}</dd>"
        f"<dt>In the bucket</dt><dd>{_version_links(view, links, champion.model_version)}</dd>"
        "</dl>"
    )
    return (
        f'<div class="card"><h3>Champion</h3>{facts}</div>'
        f'<div class="card"><h3>Metrics against the gate</h3>{_checks_table(champion.checks)}</div>'
    )


def _rules_cell(decision: DecisionEntry) -> str:
    lines: list[str] = []
    if decision.forced_reason:
        lines.append(f'<li class="forced">forced: {_e(decision.forced_reason)}</li>')
    lines.extend(f'<li class="fail">✗ {_e(r.detail)}</li>' for r in decision.failed)
    others: list[RuleLine] = [r for r in decision.rules if r.passed is not False]
    listed = f'<ul class="reasons">{"".join(lines)}</ul>' if lines else ""
    if not others:
        return listed or '<span class="muted">no rules recorded</span>'
    label = f"all {len(others)} rules passed" if not decision.failed else f"{len(others)} other rules passed"
    items = "".join(f'<li class="{"pass" if r.passed else "unknown"}">✓ {_e(r.detail)}</li>' for r in others)
    return f'{listed}<details><summary>{label}</summary><ul class="reasons">{items}</ul></details>'


def _fate(decision: DecisionEntry, blocked: dict[str, str]) -> str:
    """What became of the decided version: the champion now, deployed once, or never; blocked."""
    block = blocked.get(decision.model_version)
    mark = f'<div><span class="chip blocked" title="{_e(block)}">blocked</span></div>' if block else ""
    if decision.is_champion:
        return '<div><span class="chip champion">champion</span></div>' + mark
    if decision.deployed_at:
        return f'<div class="small muted">deployed {_when(decision.deployed_at)}</div>' + mark
    if decision.never_deployed:
        # An approved or forced version that never reached production is what an operator asks about.
        kind = "never" if decision.outcome != "rejected" else "never muted"
        return (
            f'<div><span class="chip {kind}" title="this version never reached production">never deployed</span></div>'
            + mark
        )
    return mark


def _by(actor: str | None) -> str:
    return f'<div class="small muted">by {_e(actor)}</div>' if actor else ""


def _decisions_table(view: VerticalOverview, links: Links) -> str:
    if not view.decisions:
        return '<p class="muted">No gate decisions recorded.</p>'
    rows = "".join(
        "<tr>"
        f"<td class=nowrap>{_e(d.ds)}</td>"
        f"<td>{_code(d.model_version)}{_fate(d, view.blocked_versions)}{_deployed_version(view, links, d)}</td>"
        f"<td>{_outcome_badge(d.outcome)}"
        f"{_by(d.actor)}</td>"
        f"<td>{_code(d.champion_version)}</td><td class=reasons-cell>{_rules_cell(d)}</td>"
        f"<td class=nowrap>{_run_link(links, view.name, d.dag_run_id)}"
        f"{_validation_link(view, links, d.validation_page, '<br>')}</td>"
        "</tr>"
        for d in view.decisions
    )
    return (
        "<table><thead><tr><th>Date</th><th>Model</th><th>Outcome</th><th>Against champion</th>"
        f"<th>Reasons</th><th>Run</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _deployment_row(view: VerticalOverview, d: DeploymentEntry, links: Links) -> str:
    return (
        "<tr>"
        f"<td class=nowrap>{_when(d.at)}</td><td><span class='badge {_e(d.action)}'>{_e(d.action)}</span></td>"
        f"<td class=nowrap>{_code(d.from_version)} → {_code(d.to_version)}</td><td class=nowrap>{_e(d.ds or '—')}</td>"
        f"<td>{_actor(d.actor, d.dag_run_id)}</td><td class=nowrap>{_run_link(links, view.name, d.dag_run_id)}</td>"
        "</tr>"
    )


def _deployments_table(view: VerticalOverview, links: Links) -> str:
    if not view.deployments:
        return '<p class="muted">No deployments recorded.</p>'
    rows = "".join(_deployment_row(view, d, links) for d in view.deployments)
    return (
        "<table><thead><tr><th>When</th><th>Action</th><th>From → to</th><th>For date</th>"
        f"<th>By</th><th>Run</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _event_what(event: EventEntry) -> str:
    """The event's own facts: the verdict, the move, or why an intent ended."""
    details = event.details
    if event.kind in ("decision", "forced"):
        verdict = "approved" if details.get("approved") else "rejected"
        failed = "; ".join(str(f) for f in details.get("failed") or [])
        return f"{verdict}" + (f": {_e(failed)}" if failed and not details.get("approved") else "")
    if event.kind in ("deploy", "rollback"):
        how = " (reconciled from its intent)" if details.get("reconciled") else ""
        return f"{_code(details.get('previous_version'))} → {_code(event.model_version)}{how}"
    if event.kind == "intent_closed":
        return _e(details.get("outcome"))
    return ""


def _events_table(view: VerticalOverview, links: Links) -> str:
    if not view.events:
        return '<p class="muted">No events recorded.</p>'
    rows = "".join(
        "<tr>"
        f"<td class=nowrap>{_when(e.at)}</td><td><span class='badge {_e(e.kind)}'>{_e(e.kind)}</span></td>"
        f"<td>{_code(e.model_version)}</td><td class=nowrap>{_e(e.ds or '—')}</td><td>{_event_what(e)}</td>"
        f"<td>{_e(e.reason) if e.reason else '<span class=muted>—</span>'}</td>"
        f"<td>{_actor(e.actor, e.run_id)}</td><td class=nowrap>{_run_link(links, view.name, e.run_id)}</td>"
        "</tr>"
        for e in view.events
    )
    return (
        "<table class=events><thead><tr><th>When</th><th>Event</th><th>Model</th><th>For date</th><th>What</th>"
        f"<th>Reason</th><th>By</th><th>Run</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _tuning_table(view: VerticalOverview) -> str:
    """Recent tuning sweeps (newest first); nothing at all for a vertical that never swept."""
    return render_template("tuning.html", sweeps=view.tuning) if view.tuning else ""


def _vertical_section(view: VerticalOverview, links: Links, *, full_history_link: bool) -> str:
    meta = " · ".join(
        part
        for part in (
            f"owner <strong>{_e(view.owner)}</strong>" if view.owner else "",
            f'<a data-airflow-ui href="{_e(links.dag(view.name))}">DAG</a>',
            f'<a href="{_e(links.api(view.name))}">JSON</a>',
            f'<a href="{_e(links.vertical_page(view.name))}">full history</a>' if full_history_link else "",
        )
        if part
    )
    problems = "".join(f'<p class="alert">{_e(p)}</p>' for p in ([view.spec_error] if view.spec_error else []))
    problems += "".join(f'<p class="alert">{_e(n)}</p>' for n in view.notes)
    description = f'<p class="description">{_e(view.description)}</p>' if view.description else ""
    head = f'<section id="{_e(view.name)}"><h2>{_e(view.name)}</h2><p class="meta">{meta}</p>{description}{problems}'
    if view.champion is None and not view.decisions and not view.deployments:
        # Nothing trained yet: one line instead of three empty boxes.
        docs = f' · <a href="{_e(links.data_docs(view.name))}">Data docs</a>' if view.has_data_docs else ""
        empty = f'<p class="muted">No model, gate decision or deployment in the registry yet.{docs}</p>'
        return f"{head}{empty}{_blocked_days(view, links)}{_data_checks(view)}{_tuning_table(view)}</section>"
    return (
        f"{head}"
        f'<div class="cards">{_champion_block(view, view.champion, links)}</div>'
        f"<h3>Gate decisions</h3>{_decisions_table(view, links)}"
        f"{_tuning_table(view)}"
        f"<h3>Deployments and rollbacks</h3>{_deployments_table(view, links)}"
        f"{_blocked_days(view, links)}"
        f"{_data_checks(view)}"
        f"<h3>Audit trail</h3>{_events_table(view, links)}"
        "</section>"
    )


def _summary_table(views: list[VerticalOverview]) -> str:
    rows = []
    for view in views:
        champion = view.champion
        checks = champion.checks if champion else []
        marks = " ".join(f'<span class="chip">{_e(c.metric)} {_mark(c.passed)}</span>' for c in checks)
        last = view.last_decision
        rows.append(
            "<tr>"
            f'<td><a href="#{_e(view.name)}"><strong>{_e(view.name)}</strong></a></td>'
            f"<td>{_code(champion.model_version if champion else None)}</td>"
            f"<td>{_code(champion.data_version if champion else None)}</td>"
            f"<td>{_e(champion.ds) if champion else '—'}</td>"
            f"<td>{marks or '<span class=muted>—</span>'}</td>"
            f"<td>{(_outcome_badge(last.outcome) + ' ' + _e(last.ds)) if last else '—'}</td>"
            "</tr>"
        )
    return (
        '<table class="summary"><thead><tr><th>Vertical</th><th>Champion</th><th>Data version</th>'
        "<th>Trained for</th><th>Metrics vs gate</th><th>Last decision</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# -- links to the bucket and the data docs; the blocked days (Jinja2 templates, autoescaped) --------

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,  # every value is escaped unless a template marks it safe
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_template(name: str, **context: Any) -> str:
    """One of ``templates/*.html``, with every value HTML-escaped."""
    return _TEMPLATES.get_template(name).render(**context)


def _version_links(view: VerticalOverview, links: Links, model_version: str) -> str:
    """The model card and the version folder: served links for ``file://``, the URI for ``s3://``."""
    bucket = view.bucket
    if bucket is None:
        return '<span class="muted">—</span>'
    return render_template(
        "version_links.html",
        bucket=bucket,
        uri=bucket.version_uri(model_version),
        card=links.model_card(view.name, model_version),
        folder=links.bucket_version(view.name, model_version),
    ).strip()


def _deployed_version(view: VerticalOverview, links: Links, decision: DecisionEntry) -> str:
    """A deployed decision's model card and folder (only deployed versions are in the bucket)."""
    if not (decision.is_champion or decision.deployed_at):
        return ""
    return f'<div class="small">{_version_links(view, links, decision.model_version)}</div>'


def _validation_link(view: VerticalOverview, links: Links, page: str | None, sep: str) -> str:
    if not page:
        return ""
    href = links.data_docs_page(view.name, page)
    return f'{sep}<a class="validation" href="{_e(href)}" title="the GX validation result of that date">validation</a>'


def _data_checks(view: VerticalOverview) -> str:
    """Recent data-quality warnings and drift against the champion's data; nothing when there are none."""
    return render_template("data_checks.html", nights=view.data_checks) if view.data_checks else ""


def _blocked_days(view: VerticalOverview, links: Links) -> str:
    if not view.blocked:
        return ""
    rows = [
        {
            "day": b,
            "validation": links.data_docs_page(view.name, b.validation_page) if b.validation_page else None,
        }
        for b in view.blocked
    ]
    return render_template("blocked_days.html", rows=rows)


def render_version_folder(vertical: str, model_version: str, folder: dict[str, Any], links: Links) -> str:
    """A deployed version folder: its files (read-only links), checksums and verification."""
    body = render_template(
        "version_folder.html",
        vertical=vertical,
        model_version=model_version,
        folder=folder,
        card=links.model_card(vertical, model_version),
        back=links.vertical_page(vertical),
    )
    return _page(f"{vertical} · {model_version}", body, links)


def render_model_card(vertical: str, model_version: str, card_html: str, links: Links) -> str:
    """The model card, rendered from the version's ``model_card.md`` (raw HTML in it is escaped)."""
    body = render_template(
        "model_card.html",
        vertical=vertical,
        card_html=card_html,
        folder=links.bucket_version(vertical, model_version),
        back=links.vertical_page(vertical),
    )
    return _page(f"Model card · {vertical} · {model_version}", body, links)


# -- pages ---------------------------------------------------------------------


def render_index(views: list[VerticalOverview], links: Links, *, hidden: int = 0) -> str:
    """The overview: one summary row per vertical, then each vertical's champion and history."""
    if not views:
        body = '<p class="muted">No verticals to show: no spec files found, or none you may read.</p>'
    else:
        body = _summary_table(views) + "".join(_vertical_section(v, links, full_history_link=True) for v in views)
    if hidden:
        body += f'<p class="muted">{hidden} vertical(s) hidden: your Airflow role may not read their DAG runs.</p>'
    return _page("Models", body, links)


def render_vertical(view: VerticalOverview, links: Links) -> str:
    """One vertical with its longer history."""
    back = f'<p><a href="{_e(links.view_root)}/">← all verticals</a></p>'
    return _page(f"Models · {view.name}", back + _vertical_section(view, links, full_history_link=False), links)


def render_message(title: str, message: str, links: Links) -> str:
    """An error page (unknown vertical, registry unreachable) that says what to do."""
    return _page(title, f'<p class="alert">{_e(message)}</p>', links)


def _page(title: str, body: str, links: Links) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{_e(title)}</h1><nav><a href="{_e(links.view_root)}/">Overview</a>'
        f' · <a href="{_e(links.api())}">JSON API</a></nav></header>'
        f"<main>{body}</main><script>{_FRAME_SCRIPT}</script></body></html>"
    )


# The Airflow UI shows this page in a sandboxed iframe that may not navigate the
# top window; links to Airflow pages would open a second Airflow UI inside the
# frame.  Same-origin frames may use the top window's history, which the UI's
# router follows.  Without JavaScript (or outside a frame) links work as usual.
_FRAME_SCRIPT = """
(function () {
  if (window.top === window) return;
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[data-airflow-ui]");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    try {
      var top = window.top, url = new URL(link.href);
      if (url.origin !== top.location.origin) return;
      var idx = ((top.history.state && top.history.state.idx) || 0) + 1;
      top.history.pushState({usr: null, key: Math.random().toString(36).slice(2, 10), idx: idx}, "",
                            url.pathname + url.search + url.hash);
      top.dispatchEvent(new PopStateEvent("popstate", {state: top.history.state}));
      event.preventDefault();
    } catch (error) { /* a cross-origin parent: let the frame follow the link */ }
  });
})();
"""

_CSS = """
:root { --fg:#1f2933; --muted:#6b7785; --line:#e3e8ee; --bg:#f7f9fb; --card:#fff;
        --pass:#127a3a; --pass-bg:#e3f5e9; --fail:#b42318; --fail-bg:#fdecea;
        --forced:#8a5a00; --forced-bg:#fff4d6; --accent:#0b63ce; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color:var(--fg); background:var(--bg); }
header { display:flex; align-items:baseline; justify-content:space-between; padding:14px 24px;
         background:var(--card); border-bottom:1px solid var(--line); }
header h1 { margin:0; font-size:20px; }
main { padding:16px 24px 40px; max-width:1400px; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
h2 { margin:28px 0 2px; font-size:18px; } h3 { margin:18px 0 8px; font-size:14px; text-transform:uppercase;
     letter-spacing:.04em; color:var(--muted); }
.card h3 { margin-top:0; }
.meta, .muted { color:var(--muted); } .meta { margin:0 0 6px; }
.description { margin:4px 0 10px; max-width:900px; }
section { border-top:1px solid var(--line); margin-top:24px; }
table { border-collapse:collapse; width:100%; background:var(--card); border:1px solid var(--line);
        border-radius:6px; overflow:hidden; }
th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef2f6; font-weight:600; font-size:12px; color:#3e4c59; white-space:nowrap; }
tbody tr:nth-child(even) { background:#fbfcfd; } tbody tr:last-child td { border-bottom:0; }
td.nowrap, .small { white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; } .center { text-align:center; }
code { font:12.5px/1.3 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; background:#eef2f6;
       padding:1px 5px; border-radius:4px; white-space:nowrap; }
.cards { display:flex; flex-wrap:wrap; gap:16px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:12px 16px;
        flex:1 1 380px; }
.card table { border:0; } .card th { background:transparent; border-bottom:2px solid var(--line); }
dl { display:grid; grid-template-columns:max-content 1fr; gap:6px 16px; margin:0; }
dt { color:var(--muted); } dd { margin:0; }
.mark { display:inline-block; width:1.4em; text-align:center; font-weight:700; border-radius:4px; }
.mark.pass { color:var(--pass); background:var(--pass-bg); }
.mark.fail { color:var(--fail); background:var(--fail-bg); }
.mark.unknown { color:var(--muted); background:#eef2f6; }
.chip { display:inline-block; margin:0 6px 2px 0; white-space:nowrap; font-size:12.5px; }
.chip.champion { margin:3px 0 0; padding:0 7px; border-radius:10px; font-size:11.5px; font-weight:600;
                 color:var(--accent); background:#e6f0fc; }
.small { font-size:12px; margin-top:2px; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.badge.approved, .badge.deploy { color:var(--pass); background:var(--pass-bg); }
.badge.rejected, .badge.rollback { color:var(--fail); background:var(--fail-bg); }
.badge.forced, .badge.block, .badge.unblock { color:var(--forced); background:var(--forced-bg); }
.chip.blocked { margin:3px 0 0; padding:0 7px; border-radius:10px; font-size:11.5px; font-weight:600;
                color:var(--fail); background:var(--fail-bg); }
.never { color:var(--forced); }
ul.reasons { margin:0; padding:0; list-style:none; }
ul.reasons li { margin:1px 0; } li.fail { color:var(--fail); } li.forced { color:var(--forced); font-weight:600; }
li.pass { color:var(--pass); } li.unknown { color:var(--muted); }
details summary { cursor:pointer; color:var(--muted); font-size:12.5px; }
td.reasons-cell { min-width:320px; }
.chip.never { margin:3px 0 0; padding:0 7px; border-radius:10px; font-size:11.5px; font-weight:600;
              color:var(--forced); background:var(--forced-bg); }
.chip.never.muted { color:var(--muted); background:#eef2f6; }
.blocked td.summary { color:var(--fail); }
.card-md table { width:auto; } .card-md img { max-width:420px; }
.alert { background:var(--fail-bg); color:var(--fail); padding:8px 12px; border-radius:6px; white-space:pre-wrap; }
"""
