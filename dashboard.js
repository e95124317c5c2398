// The dashboard: reads /api/v1/* every few seconds (the HttpOnly cookie authenticates),
// draws what they say, and sends the commands. No network beyond this server.
"use strict";
(function () {
  const REFRESH_MS = 4000;
  const $ = (id) => document.getElementById(id);
  let quote = "";
  let paused = false;
  let timer = null;

  const fmt = (x, digits = 2) => (x === null || x === undefined || Number.isNaN(x)) ? "–"
    : Number(x).toLocaleString(undefined, {minimumFractionDigits: digits, maximumFractionDigits: digits});
  const price = (x) => (x === null || x === undefined) ? "–"
    : Number(x).toPrecision(6).replace(/\.?0+$/, "");
  const signed = (x, digits = 2) => (x > 0 ? "+" : "") + fmt(x, digits);
  const cls = (x) => x > 0 ? "up" : (x < 0 ? "down" : "");
  const when = (ms) => ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 16) : "–";

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function say(text, error) {
    const m = $("message");
    m.textContent = text || "";
    m.className = error ? "error" : "";
  }

  async function api(path, options) {
    const r = await fetch("/api/v1/" + path, Object.assign({credentials: "same-origin",
      headers: {"Accept": "application/json"}}, options || {}));
    if (r.status === 401) { showLogin(); throw new Error("unauthorized"); }
    const body = await r.json().catch(() => ({error: "HTTP " + r.status}));
    if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
    return body;
  }

  function showLogin(message) {
    $("dashboard").hidden = true;
    $("login").hidden = false;
    if (message) $("login-error").textContent = message;
    if (timer) { clearInterval(timer); timer = null; }
  }

  function showDashboard() {
    $("login").hidden = true;
    $("dashboard").hidden = false;
  }

  function drawStatus(s) {
    quote = s.quote || "";
    paused = !!s.paused;
    $("mode").textContent = s.mode || "?";
    const state = $("state");
    state.textContent = paused ? "entries paused" : "trading";
    state.className = "badge" + (paused ? " paused" : "");
    $("pause").textContent = paused ? "Resume entries" : "Pause entries";
    $("pause").dataset.paused = paused ? "1" : "0";
    $("f-equity").textContent = fmt(s.equity) + " " + quote;
    const pnl = $("f-pnl");
    pnl.textContent = s.pnl === null ? "–" : signed(s.pnl) + " (" + signed(s.pnl_pct) + " %)";
    pnl.className = cls(s.pnl);
    $("f-cash").textContent = fmt(s.cash) + " " + quote;
    $("f-positions").textContent = (s.open_positions || 0) + " / " + (s.max_positions || "?");
    const t = s.totals || {};
    $("f-trades").textContent = (t.trades || 0) + " (" + signed(t.total_profit || 0) + ")";
    $("f-winrate").textContent = t.trades ? fmt(100 * t.win_rate, 0) + " %" : "–";
    $("f-cycle").textContent = s.cycle === undefined ? "–" : s.cycle + " · " + (s.pairs || 0) + " pairs";
    $("f-market").textContent = (s.market_data || "–") + (s.market_data === "websocket"
      ? (s.streams_up ? " (up)" : " (down)") : "");
    $("f-strategy").textContent = (s.strategy || "–") + " " + (s.timeframe || "");
    $("f-model").textContent = s.model || "–";
    $("f-gate").textContent = s.gate || "open";
    $("f-updated").textContent = when(s.updated_ms);
  }

  function drawPositions(p) {
    const body = $("positions").querySelector("tbody");
    body.replaceChildren();
    for (const pos of p.positions) {
      const tr = document.createElement("tr");
      tr.dataset.symbol = pos.symbol;
      tr.append(cell(pos.symbol), cell(price(pos.amount)), cell(price(pos.entry_price)),
        cell(price(pos.price), "price"), cell(price(pos.stop_loss), "stop"),
        cell(price(pos.take_profit)), cell(signed(pos.unrealized), "unrealized " + cls(pos.unrealized)),
        cell(when(pos.entry_time_ms)));
      const td = document.createElement("td");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "force-exit danger";
      b.dataset.symbol = pos.symbol;
      b.textContent = "Force exit";
      b.addEventListener("click", () => forceExit(pos.symbol, b));
      td.append(b);
      tr.append(td);
      body.append(tr);
    }
    $("no-positions").hidden = p.positions.length > 0;
    $("exit-all").disabled = p.positions.length === 0;
  }

  function drawTrades(t) {
    const body = $("trades").querySelector("tbody");
    body.replaceChildren();
    for (const tr of t.trades) {
      const row = document.createElement("tr");
      row.dataset.symbol = tr.symbol;
      row.dataset.exitTime = tr.exit_time_ms;
      row.append(cell(tr.symbol), cell(when(tr.exit_time_ms)), cell(price(tr.entry_price)),
        cell(price(tr.exit_price)), cell(signed(tr.profit), "profit " + cls(tr.profit)),
        cell(signed(tr.return_pct) + " %", cls(tr.return_pct)), cell(tr.exit_reason, "reason"));
      body.append(row);
    }
    $("no-trades").hidden = t.trades.length > 0;
  }

  function drawModel(m) {
    const el = $("model-body");
    if (!m.enabled) { el.textContent = "ML off: the strategy decides alone."; return; }
    if (!m.ready) { el.textContent = "The model is training; the strategy decides alone."; return; }
    el.replaceChildren();
    el.className = "";
    const line = document.createElement("div");
    line.textContent = "v" + m.version + " · AUC " + fmt(m.auc, 3) + " (minimum " + fmt(m.min_auc, 2) + ")";
    const verdict = document.createElement("div");
    verdict.id = "model-trusted";
    verdict.textContent = m.trusted ? "trusted: it filters the signals" : "not trusted: the strategy decides alone";
    verdict.className = m.trusted ? "up" : "down";
    el.append(line, verdict);
  }

  function drawCaches(c) {
    const body = $("cache-table").querySelector("tbody");
    body.replaceChildren();
    for (const [name, s] of Object.entries(c.caches)) {
      const tr = document.createElement("tr");
      tr.dataset.cache = name;
      if (s.error) { tr.append(cell(name), cell(s.error)); body.append(tr); continue; }
      tr.append(cell(name), cell(s.lookups ? fmt(100 * s.hit_rate, 0) + " %" : "–"),
        cell(String(s.hits)), cell(String(s.lookups)));
      body.append(tr);
    }
  }

  function drawLocks(p) {
    const ul = $("locks");
    ul.replaceChildren();
    for (const lock of p.locks) {
      const li = document.createElement("li");
      li.textContent = lock;
      ul.append(li);
    }
    $("no-locks").hidden = p.locks.length > 0;
  }

  function drawChart() {
    const img = $("equity");
    const width = Math.max(320, Math.min(1200, Math.round(img.parentElement.clientWidth || 800)));
    const height = Math.round(width < 600 ? width * 0.6 : width * 0.35);
    img.src = "/api/v1/equity.png?width=" + width + "&height=" + height + "&t=" + Date.now();
  }

  async function refresh() {
    try {
      const [s, p, t, m, c, pr] = await Promise.all([api("status"), api("positions"),
        api("trades?per_page=20"), api("model"), api("caches"), api("protections")]);
      showDashboard();
      drawStatus(s); drawPositions(p); drawTrades(t); drawModel(m); drawCaches(c); drawLocks(pr);
      drawChart();
      document.body.dataset.loaded = String(Date.now());
      if (!timer) timer = setInterval(refresh, REFRESH_MS);
    } catch (e) {
      if (e.message !== "unauthorized") say("refresh failed: " + e.message, true);
    }
  }

  async function command(path, body, button) {
    if (button) button.disabled = true;
    try {
      const answer = await api(path, {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body || {})});
      say(answer.text || "done");
    } catch (e) {
      if (e.message !== "unauthorized") say(e.message, true);
    } finally {
      if (button) button.disabled = false;
      refresh();
    }
  }

  function forceExit(symbol, button) {
    command("forceexit", {symbol: symbol}, button);
  }

  $("pause").addEventListener("click", (ev) =>
    command(paused ? "resume" : "pause", {}, ev.currentTarget));
  $("exit-all").addEventListener("click", (ev) => {
    if (window.confirm("Sell every open position now?")) command("forceexit", {symbol: "all"}, ev.currentTarget);
  });
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await fetch("/login", {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token: $("token").value})});
    $("token").value = "";
    if (r.ok) { $("login-error").textContent = ""; refresh(); }
    else showLogin("Wrong token.");
  });
  refresh();
})();
