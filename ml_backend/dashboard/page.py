"""The dashboard page: server-rendered HTML from a metrics snapshot (pure; jinja2 with autoescape, no JS)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from jinja2 import Environment

_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["pct"] = lambda v: "–" if v is None else f"{v:.0%}"
_ENV.filters["num"] = lambda v, d=2: "–" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.{d}f}")

_TEMPLATE = _ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>HALI · project {{ s.project_id }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
.kpi{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}.kpi div{background:#f4f6f8;padding:.5em 1em;border-radius:6px}
.kpi b{display:block;font-size:1.3em}table{border-collapse:collapse;font-size:13px}
td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #eee}td:first-child,th:first-child{text-align:left}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}.muted{color:#777}img{max-width:100%}
.slides{display:flex;flex-wrap:wrap;gap:1em}.slides figure{margin:0;max-width:340px}
</style></head><body>
<h1>HALI · project {{ s.project_id }}</h1>
<div class="muted">snapshot of {{ when }} ({{ age }} ago, {{ s.seconds }} s to build); model {{ s.model_version }};
 refresh after the next retrain · <a href="{{ base }}/metrics/{{ s.project_id }}">metrics JSON</a>
 · <a href="{{ base }}/metrics/{{ s.project_id }}?format=prometheus">Prometheus</a></div>
<div class="kpi">
<div><b>{{ s.n_labels|num }}</b>labels ({{ s.n_nuclei|num }} nuclei)</div>
<div><b>{{ t.tasks_done|num }} / {{ t.tasks|num }}</b>tasks done</div>
<div><b>{{ pending|num }}</b>labels since the last retrain</div>
<div><b>{{ s.kept_share|pct }}</b>suggestions kept</div>
<div><b>{{ gold.balanced_accuracy|pct }}</b>gold balanced accuracy ({{ gold.gold_n|num }} cells)</div>
<div><b>{{ s.agreement.kappa|num }}</b>kappa ({{ s.agreement.cells|num }} cells, 2+ annotators)</div>
</div>

<h2>Progress per slide and class</h2>
<div class="grid"><div><table><tr><th>slide</th><th>tasks done</th><th>cells labelled</th>
{% for c in s.targets %}<th>{{ c }}</th>{% endfor %}</tr>
{% for name, r in s.progress.slides.items() %}<tr><td>{{ name }}</td><td>{{ r.tasks_done|num }}/{{ r.tasks|num }}</td>
<td>{{ r.cells_labelled|num }}/{{ r.cells|num }}</td>{% for c in s.targets %}<td>{{ r.per_class[c]|num }}</td>{% endfor %}</tr>
{% endfor %}<tr><th>all</th><th>{{ t.tasks_done|num }}/{{ t.tasks|num }}</th><th>{{ t.cells_labelled|num }}/{{ t.cells|num }}</th>
{% for c in s.targets %}<th>{{ t.per_class[c]|num }}</th>{% endfor %}</tr></table></div>
<div><img src="{{ base }}/dashboard/{{ s.project_id }}/progress.png" alt="labelled cells per slide and class"></div></div>

<h2>Annotators: labels per hour</h2>
<div class="grid"><div><table><tr><th>annotator</th><th>labels</th><th>annotations</th><th>hours</th><th>labels/hour</th></tr>
{% for who, r in s.annotators.items() %}<tr><td>{{ who }}</td><td>{{ r.labels|num }}</td><td>{{ r.annotations|num }}</td>
<td>{{ r.hours|num }}</td><td>{{ r.labels_per_hour|num(0) }}</td></tr>{% endfor %}</table>
<p class="muted">Hours: Label Studio's lead time (the task open until Submit).</p></div>
<div><img src="{{ base }}/dashboard/{{ s.project_id }}/annotators.png" alt="labels over time per annotator"></div></div>

<h2>Suggestions kept per model version</h2>
<div class="grid"><div><table><tr><th>version</th><th>annotations</th><th>kept</th><th>changed</th><th>kept</th></tr>
{% for v, r in acceptance %}<tr><td>{{ v }}</td><td>{{ r.annotations|num }}</td><td>{{ r.kept|num }}</td>
<td>{{ r.changed|num }}</td><td>{{ r.kept_share|pct }}</td></tr>{% endfor %}</table>
<p class="muted">Kept: a box submitted as suggested. Changed: relabelled, moved or deleted.{% if more_versions %}
 Latest {{ acceptance|length }} versions shown.{% endif %}</p></div>
<div><img src="{{ base }}/dashboard/{{ s.project_id }}/acceptance.png" alt="suggestions kept per version"></div></div>

<h2>Learning curve on the gold set</h2>
<div class="grid"><div><p>{{ (s.gold_share * 100)|round(1) }}% of labelled cells (chosen by cell id, so the same cells every
time) are never trained on; each model version is scored on them when it is trained.</p>
<table><tr><th>version</th><th>trained on</th><th>gold cells</th><th>accuracy</th><th>balanced</th></tr>
{% for p in curve %}<tr><td>{{ p.model_version }}</td><td>{{ p.n_train|num }}</td><td>{{ p.gold_n|num }}</td>
<td>{{ p.accuracy|pct }}</td><td>{{ p.balanced_accuracy|pct }}</td></tr>{% endfor %}</table></div>
<div><img src="{{ base }}/dashboard/{{ s.project_id }}/learning.png" alt="learning curve"></div></div>

<h2>Agreement (overlap tasks)</h2>
{% if s.agreement.pairs %}<table><tr><th>annotators</th><th>shared cells</th><th>same label</th><th>Cohen's kappa</th></tr>
{% for p in s.agreement.pairs %}<tr><td>{{ p.a }} · {{ p.b }}</td><td>{{ p.cells|num }}</td><td>{{ p.agree|pct }}</td>
<td>{{ p.kappa|num }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">No cell has labels from two annotators yet. Set the project's overlap (Settings &gt; Quality:
annotations per task) above 1 to measure agreement.</p>{% endif %}

<h2>Coverage per slide</h2>
<p class="muted">Grey outline: a task still open; green: annotated; dots: labelled cells in their class colour.</p>
<div class="slides">{% for slide in s.coverage %}<figure>
<img src="{{ base }}/dashboard/{{ s.project_id }}/coverage/{{ slide }}.png" alt="coverage of {{ slide }}" loading="lazy">
<figcaption>{{ slide }}</figcaption></figure>{% endfor %}</div>
</body></html>
""")

_EMPTY = _ENV.from_string("""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>HALI · project {{ p }}</title></head><body style="font:14px system-ui,sans-serif;margin:2em">
<h1>HALI · project {{ p }}</h1><p>No dashboard yet for project {{ p }}: the worker writes it after each retrain,
and the first retrain comes after the first labels (HALI_RETRAIN_EVERY). Check the project id, and that
<code>hali worker</code> runs with the same HALI_DATA_DIR as this server.</p></body></html>
""")

MAX_ROWS = 30  # versions listed in the tables (the plots show them all)


def render_page(snapshot: Mapping[str, Any], pending: int | None, base: str = "") -> str:
    """The dashboard HTML of one project's snapshot; ``base``: the URL prefix the backend is served under."""
    age = max(0.0, time.time() - float(snapshot.get("generated_at") or 0))
    acceptance = list((snapshot.get("acceptance") or {}).items())
    curve = snapshot.get("learning_curve") or []
    return _TEMPLATE.render(
        s=snapshot, t=snapshot["progress"]["total"], pending=pending, base=base,
        when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot.get("generated_at") or 0)),
        age=_duration(age), acceptance=acceptance[-MAX_ROWS:][::-1], more_versions=len(acceptance) > MAX_ROWS,
        curve=curve[-MAX_ROWS:][::-1], gold=curve[-1] if curve else {})


def render_empty(project_id: int) -> str:
    return _EMPTY.render(p=project_id)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
