// The live view's page: HTML, CSS, a little JavaScript and the five-step diagram as inline
// SVG, in one string, so it works offline and the server sends exactly one file. Sized to be
// read from the back of a room. Its script opens `/events`, draws the `snapshot`, then folds
// each `update` in: the arrow of the update's step flashes, the user's row moves on, and the
// log line (the same line the terminal shows) scrolls in. Text goes in with `textContent`,
// never `innerHTML`: addresses and reasons come from the network.
// `?follow=host:port` highlights that user's row and freezes the page once it has finished,
// so the picture holds still while you explain it.

let inspectorPage = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ngrok-- live view</title>
<style>
  body { font: 20px/1.35 system-ui, sans-serif; margin: 16px 24px; color: #111; background: #fff; }
  h1 { font-size: 28px; margin: 0 0 6px; }
  h1 small { font-weight: normal; color: #555; font-size: 20px; }
  #status { float: right; font-size: 18px; padding: 2px 10px; border-radius: 6px; background: #ddd; }
  #status.live { background: #c8f0c8; } #status.frozen { background: #ffe3a3; }
  svg { width: 100%; height: auto; display: block; }
  svg text { font-family: system-ui, sans-serif; }
  .box rect { fill: #eef3fb; stroke: #345; stroke-width: 2; }
  .box .name { font-size: 26px; font-weight: bold; text-anchor: middle; }
  .box .addr { font-size: 16px; text-anchor: middle; fill: #333; }
  .life { stroke: #bbb; stroke-width: 2; stroke-dasharray: 4 6; }
  .step line, .step path { stroke: #99a; stroke-width: 4; fill: none; transition: stroke .3s, stroke-width .3s; }
  .step text { font-size: 21px; fill: #556; }
  .step.flash line, .step.flash path { stroke: #f07800; stroke-width: 9; }
  .step.flash text { fill: #b04a00; font-weight: bold; }
  #step1.up line { stroke: #1a9a3a; } #step1.up text { fill: #0d6a25; }
  #step1.down line { stroke-dasharray: 10 8; }
  #step5.busy path { stroke: #1a9a3a; stroke-width: 7; }
  #control { font-size: 22px; margin: 4px 0 10px; padding: 8px 12px; background: #f4f4f4; border-radius: 8px; }
  #control b.registered { color: #0d6a25; } #control b.lost, #control b.unreachable, #control b.refused { color: #b00; }
  table { border-collapse: collapse; width: 100%; font-size: 22px; }
  th { text-align: left; font-size: 18px; color: #555; border-bottom: 2px solid #999; padding: 4px 8px; white-space: nowrap; }
  td { padding: 4px 8px; border-bottom: 1px solid #ddd; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.ending { white-space: normal; } td.ending small { font-size: 16px; font-weight: normal; color: #555; }
  td.n { text-align: right; }
  tr.followed td { background: #fff4d6; }
  .dot { display: inline-block; width: 30px; height: 30px; line-height: 30px; border-radius: 50%; margin-right: 4px;
         text-align: center; font-size: 17px; font-weight: bold; background: #e4e4e4; color: #888; }
  .dot.on { background: #1a6ad0; color: #fff; }
  .ending-finished { color: #0d6a25; font-weight: bold; } .ending-other { color: #b00; font-weight: bold; }
  #log { font: 17px/1.3 ui-monospace, monospace; white-space: pre-wrap; background: #111; color: #ddd;
         padding: 8px 12px; border-radius: 8px; margin-top: 12px; }
</style>
</head>
<body>
<h1>ngrok-- live view <small id="title"></small> <span id="status">connecting…</span></h1>
<svg viewBox="0 0 1200 430" role="img" aria-label="The five steps of the tunnel">
  <defs>
    <marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="18" markerHeight="18"
            orient="auto-start-reverse">
      <path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker>
  </defs>
  <g class="box"><rect x="20" y="10" width="190" height="90" rx="10"/>
    <text class="name" x="115" y="50">public user</text><text class="addr" x="115" y="78" id="addr-user">anyone</text></g>
  <g class="box"><rect x="330" y="10" width="260" height="90" rx="10"/>
    <text class="name" x="460" y="40">server</text>
    <text class="addr" x="460" y="64" id="addr-server1"></text>
    <text class="addr" x="460" y="86" id="addr-server2"></text></g>
  <g class="box"><rect x="690" y="10" width="240" height="90" rx="10"/>
    <text class="name" x="810" y="50">client</text><text class="addr" x="810" y="78" id="addr-client">behind NAT</text></g>
  <g class="box"><rect x="1010" y="10" width="170" height="90" rx="10"/>
    <text class="name" x="1095" y="50">local app</text><text class="addr" x="1095" y="78" id="addr-app"></text></g>
  <line class="life" x1="115" y1="100" x2="115" y2="420"/><line class="life" x1="460" y1="100" x2="460" y2="420"/>
  <line class="life" x1="810" y1="100" x2="810" y2="420"/><line class="life" x1="1095" y1="100" x2="1095" y2="420"/>
  <g class="step down" id="step1"><line x1="805" y1="150" x2="468" y2="150" marker-end="url(#head)"/>
    <text x="635" y="138" text-anchor="middle">1. control connection</text></g>
  <g class="step" id="step2"><line x1="120" y1="205" x2="452" y2="205" marker-end="url(#head)"/>
    <text x="285" y="193" text-anchor="middle">2. user connects</text></g>
  <g class="step" id="step3"><line x1="465" y1="260" x2="802" y2="260" marker-end="url(#head)"/>
    <text x="635" y="248" text-anchor="middle">3. create_proxy &lt;id&gt; &lt;user&gt;</text></g>
  <g class="step" id="step4"><line x1="805" y1="318" x2="468" y2="318" marker-end="url(#head)"/>
    <line x1="815" y1="318" x2="1087" y2="318" marker-end="url(#head)"/>
    <text x="635" y="306" text-anchor="middle">4. proxy connection</text>
    <text x="952" y="306" text-anchor="middle">4. private connection</text></g>
  <g class="step" id="step5"><path d="M124,385 H1087" marker-start="url(#head)" marker-end="url(#head)"/>
    <text x="600" y="373" text-anchor="middle">5. joined: user ⇄ server ⇄ client ⇄ app, bytes both ways</text></g>
</svg>
<div id="control">step 1, control connection: <b id="control-status">waiting</b> <span id="control-detail"></span></div>
<table>
  <thead><tr><th>user</th><th>steps reached</th><th class="n">user → app</th><th class="n">app → user</th>
    <th class="n">time</th><th>how it ended</th></tr></thead>
  <tbody id="users"></tbody>
</table>
<div id="log"></div>
<script>
"use strict";
const $ = id => document.getElementById(id);
const follow = new URLSearchParams(location.search).get("follow");
const maxUsers = 50, maxLines = 10;
let users = new Map(), lines = [], offset = 0, control = {}, frozen = false;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}
function bytes(n) { return n === null || n === undefined ? "…" : n.toLocaleString("en-US") + " B"; }
function millis(ms) { return ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(1) + " s"; }
function serverNow() { return Date.now() - offset; }

function drawEndpoints(e) {
  if (e.public) $("addr-server1").textContent = "public " + e.public;
  if (e.control || e.proxy) $("addr-server2").textContent =
    [e.control && "control :" + e.control.split(":").pop(), e.proxy && "proxy :" + e.proxy.split(":").pop()]
      .filter(Boolean).join(" · ");
  if (e.app) $("addr-app").textContent = e.app;
}
function drawControl(c) {
  control = c;
  const status = $("control-status");
  status.textContent = c.status;
  status.className = c.status;
  const parts = [];
  if (c.client) parts.push("client " + c.client);
  if (c.server) parts.push("server " + c.server);
  if (c.registrations > 1) parts.push("registered " + c.registrations + " times (reconnected)");
  if (c.retry > 0) parts.push("retry " + c.retry);
  if (c.heartbeats > 0) parts.push("heartbeats " + c.heartbeats);
  if (c.detail) parts.push(c.detail);
  $("control-detail").textContent = parts.length ? "— " + parts.join(" · ") : "";
  $("step1").classList.toggle("up", c.status === "registered");
  $("step1").classList.toggle("down", c.status !== "registered");
  if (c.client) $("addr-client").textContent = c.client;
}
function drawUsers() {
  const body = $("users");
  body.replaceChildren();
  const rows = [...users.values()].sort((a, b) => b.serial - a.serial);
  for (const u of rows) {
    const tr = el("tr");
    tr.dataset.user = u.user; tr.dataset.step = u.step; tr.dataset.ending = u.ending || "";
    tr.dataset.sent = u.sent ?? ""; tr.dataset.received = u.received ?? "";
    if (u.user === follow) tr.className = "followed";
    tr.append(el("td", u.user));
    const steps = el("td");
    for (let s = 2; s <= 5; s++) steps.append(el("span", String(s), s <= u.step ? "dot on" : "dot"));
    tr.append(steps, el("td", bytes(u.sent), "n"), el("td", bytes(u.received), "n"));
    tr.append(el("td", millis((u.endedMs ?? serverNow()) - u.startedMs), "n"));
    const ending = el("td", u.ending || "connected",
                      "ending " + (u.ending === "finished" ? "ending-finished" : u.ending ? "ending-other" : ""));
    if (u.detail) ending.append(" ", el("small", u.detail));
    tr.append(ending);
    body.append(tr);
  }
  $("step5").classList.toggle("busy", rows.some(u => u.step === 5 && !u.ending));
  const newest = rows[0];
  if (newest) $("addr-user").textContent = newest.user;
}
function drawLog() { $("log").textContent = lines.join("\n"); }
// A user crosses the whole diagram in milliseconds; lit all at once, the steps would tell
// nothing. So flashes queue up and play in order, one step at a time (repeats merged, and
// only the latest few kept when the tunnel is busy); the last one stays lit a little longer.
const flashes = [];
let lit = null, lastStep = null, timer = null, lingering = false;
function flash(step) {
  if (!$("step" + step) || step === lastStep) return;
  lastStep = step;
  flashes.push(step);
  flashes.splice(0, flashes.length - 6);
  if (!lit || lingering) { clearTimeout(timer); playFlashes(); }
}
function playFlashes() {
  if (lit) lit.classList.remove("flash");
  const step = flashes.shift();
  lit = step ? $("step" + step) : null;
  if (!lit) { lastStep = null; return; }
  lit.classList.add("flash");
  lingering = flashes.length === 0;
  timer = setTimeout(playFlashes, lingering ? 1500 : 500);
}
function keepUser(u) {
  users.set(u.serial, u);
  while (users.size > maxUsers) users.delete(Math.min(...users.keys()));
}
function freezeIfDone() {
  const done = [...users.values()].find(u => u.user === follow && u.ending);
  if (!done) return;
  frozen = true;
  source.close();
  $("status").textContent = "frozen: " + follow + " " + done.ending + " (reload to go live)";
  $("status").className = "frozen";
}

const source = new EventSource("events")  // relative: a class tunnel's page is at /tunnel/<name>/;
source.addEventListener("snapshot", e => {
  const s = JSON.parse(e.data);
  offset = Date.now() - s.nowMs;
  $("title").textContent = s.title + " · " + s.viewers + " watching";
  users = new Map(); s.users.forEach(keepUser);
  lines = s.log.slice(-maxLines);
  drawEndpoints(s.endpoints); drawControl(s.control); drawUsers(); drawLog();
  if (follow) freezeIfDone();
});
source.addEventListener("update", e => {
  const u = JSON.parse(e.data);
  offset = Date.now() - u.nowMs;
  if (u.user) keepUser(u.user);
  lines.push(u.line); lines = lines.slice(-maxLines);
  drawEndpoints(u.endpoints); drawControl(u.control); drawUsers(); drawLog(); flash(u.step);
  if (follow) freezeIfDone();
});
source.onopen = () => { $("status").textContent = "live"; $("status").className = "live"; };
source.onerror = () => { if (!frozen) { $("status").textContent = "reconnecting…"; $("status").className = ""; } };
setInterval(() => { if (!frozen) drawUsers(); }, 500);
</script>
</body>
</html>
"""#
