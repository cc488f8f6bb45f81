"""The dashboard page and its script: no framework, no CDN (the service runs offline), only
``textContent`` for anything that came from the server. The script polls /dashboard/data."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SO8T gate</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 20px;display:flex;gap:24px;align-items:baseline}
header h1{font-size:18px;margin:0}.mode-emergency{background:#b3261e!important}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:14px;padding:16px 20px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0002}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:#5a6272;margin:0 0 8px}
.big{font-size:30px;font-weight:600}.unit{color:#5a6272;font-size:13px}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #eee}
.bar{height:14px;border-radius:3px;display:inline-block;vertical-align:middle;min-width:2px}
.ALLOW{background:#2e7d32}.REFUSE{background:#b3261e}.ESCALATE{background:#e0a100}
.wide{grid-column:1/-1}svg{width:100%;height:70px}polyline{fill:none;stroke:#3558c6;stroke-width:2}
</style></head>
<body data-updated="">
<header id="banner"><h1>SO8T safety gate</h1><span>model <b id="model-version">–</b></span>
<span>mode <b id="mode">–</b></span><span>ready <b id="ready">–</b></span><span id="stamp"></span></header>
<main>
<section><h2>Requests</h2><div><span class="big" id="rpm">–</span> <span class="unit">decisions / min</span></div>
<div class="unit"><span id="http-rpm">–</span> API calls / min</div><svg viewBox="0 0 300 70" preserveAspectRatio="none">
<polyline id="spark" points=""/></svg></section>
<section><h2>Latency (decision calls, 5 min)</h2><table>
<tr><th>p50</th><td id="p50">–</td></tr><tr><th>p95</th><td id="p95">–</td></tr><tr><th>p99</th><td id="p99">–</td></tr>
</table><div class="unit">milliseconds, from the latency histogram; – when no call came in the last 5 min</div></section>
<section><h2>Errors and escalations (5 min)</h2><table>
<tr><th>gate error rate</th><td id="error-rate">–</td></tr><tr><th>API 5xx rate</th><td id="http-error-rate">–</td></tr>
<tr><th>escalation rate</th><td id="escalation-rate">–</td></tr><tr><th>fail-closed (total)</th><td id="fail-closed">–</td></tr>
</table></section>
<section><h2>Decision mix (since start)</h2><table id="mix"></table><h2 style="margin-top:10px">Not allowed, by category</h2>
<table id="categories"></table></section>
<section><h2>Escalation queue</h2><table><tr><th>open</th><td id="open-cases">–</td></tr>
<tr><th>overdue</th><td id="overdue-cases">–</td></tr><tr><th>spooled</th><td id="spooled-cases">–</td></tr>
<tr><th>waiting for a batch</th><td id="pending">–</td></tr></table></section>
<section class="wide"><h2>Recent fail-closed events</h2><table id="events"><thead><tr><th>time (UTC)</th>
<th>request</th><th>reason</th><th>category</th><th>endpoint</th></tr></thead><tbody></tbody></table></section>
</main><script src="/dashboard/app.js"></script></body></html>
"""

SCRIPT = """'use strict';
const $ = (id) => document.getElementById(id);
const show = (id, v, suffix) => { $(id).textContent = (v === null || v === undefined) ? '–' : v + (suffix || ''); };
const pct = (v) => (v === null || v === undefined) ? null : (100 * v).toFixed(1);
function rows(table, entries, withBar) {
  const max = Math.max(1, ...entries.map((e) => e[1]));
  table.replaceChildren(...entries.map(([k, v]) => {
    const tr = document.createElement('tr'); tr.id = table.id + '-' + k;
    const th = document.createElement('th'); th.textContent = k;
    const td = document.createElement('td');
    if (withBar) { const bar = document.createElement('span'); bar.className = 'bar ' + k;
      bar.style.width = Math.round(140 * v / max) + 'px'; td.append(bar, ' '); }
    td.append(String(v)); tr.append(th, td); return tr; }));
}
async function refresh() {
  try {
    const r = await fetch('/dashboard/data', {cache: 'no-store'});
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const d = await r.json();
    show('model-version', d.model_version); show('mode', d.mode); show('ready', d.ready ? 'yes' : 'no');
    $('banner').classList.toggle('mode-emergency', d.mode === 'emergency');
    show('rpm', d.requests_per_minute); show('http-rpm', d.http_requests_per_minute);
    show('p50', d.latency_ms.p50); show('p95', d.latency_ms.p95); show('p99', d.latency_ms.p99);
    show('error-rate', pct(d.error_rate), ' %'); show('http-error-rate', pct(d.http_error_rate), ' %');
    show('escalation-rate', pct(d.escalation_rate), ' %'); show('fail-closed', d.fail_closed_total);
    show('open-cases', d.escalations.open); show('overdue-cases', d.escalations.overdue);
    show('spooled-cases', d.escalations.spooled); show('pending', d.pending);
    rows($('mix'), Object.entries(d.decisions_total), true);
    rows($('categories'), Object.entries(d.flagged_by_category), false);
    const body = $('events').tBodies[0];
    body.replaceChildren(...d.recent_fail_closed.map((e) => {
      const tr = document.createElement('tr');
      for (const k of ['time', 'request_id', 'reason', 'category', 'endpoint']) {
        const td = document.createElement('td'); td.textContent = e[k] === null ? '' : e[k]; tr.append(td); }
      return tr; }));
    const s = d.series, top = Math.max(1, ...s.map((p) => p.rpm));
    $('spark').setAttribute('points', s.map((p, i) =>
      (300 * i / Math.max(1, s.length - 1)).toFixed(1) + ',' + (68 - 64 * p.rpm / top).toFixed(1)).join(' '));
    $('stamp').textContent = 'updated ' + new Date().toISOString().slice(11, 19) + ' UTC';
    document.body.dataset.updated = String(Date.now());
  } catch (err) { $('stamp').textContent = 'no data: ' + err.message; }
}
refresh(); setInterval(refresh, 2000);
"""
