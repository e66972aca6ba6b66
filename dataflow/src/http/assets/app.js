// The live page: one EventSource on /events; every `epoch` event carries the whole view as of
// a committed epoch (state, last epochs, latest alerts, progress, health), rendered here with no
// library; `provisional` events carry the open epoch's running figures, shown apart. When the stream drops, the numbers are cleared and the page says so: a shop must
// not read stale figures as current ones.
"use strict";

const $ = (id) => document.getElementById(id);
const NONE = "\u2014";

// The page's currency (`--currency`, an ISO 4217 code) and the browser's locale decide how
// amounts and counts look: "£1,350,818.683" in en-GB, "1.350.818,683 £" in de-DE.
const CURRENCY = document.querySelector('meta[name="currency"]').content;
const LOCALE_MONEY = new Intl.NumberFormat(undefined, {
  style: "currency", currency: CURRENCY, minimumFractionDigits: 0, maximumFractionDigits: 0,
});
const LOCALE_COUNT = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const DECIMAL = new Intl.NumberFormat(undefined).formatToParts(1.5)
  .find((p) => p.type === "decimal").value;

// Money arrives as integer thousandths and is shown exactly, never through a float: the
// whole units by the locale's currency format, then at least two decimals (three when the
// amount has them: "£2.55", "£12.345").
function money(milli) {
  if (milli === null || milli === undefined) return NONE;
  const negative = milli < 0;
  const abs = Math.abs(milli);
  const whole = (abs - (abs % 1000)) / 1000;
  const frac = String(abs % 1000).padStart(3, "0").replace(/(\d\d)0$/, "$1");
  // -0 keeps the sign of amounts between -1 and 0.
  const parts = LOCALE_MONEY.formatToParts(negative ? -whole || -0 : whole);
  let at = parts.length;
  for (let i = parts.length - 1; i >= 0; i--) {
    if (parts[i].type === "integer") { at = i + 1; break; }
  }
  parts.splice(at, 0, { type: "decimal", value: DECIMAL }, { type: "fraction", value: frac });
  return parts.map((p) => p.value).join("");
}

// Money in whole units, for the chart's axis.
function moneyWhole(milli) {
  return LOCALE_MONEY.format(Math.round(milli / 1000));
}

function count(n) {
  return n === null || n === undefined ? NONE : LOCALE_COUNT.format(n);
}

function text(id, value) {
  $(id).textContent = value;
}

function cell(tr, value, numeric) {
  const td = document.createElement("td");
  td.textContent = value;
  if (numeric) td.className = "n";
  tr.appendChild(td);
  return td;
}

// A product: its name (when it has one) above its stock code.
function productCell(tr, p) {
  const td = cell(tr, "");
  td.dataset.testid = "product";
  if (p.description) {
    const name = document.createElement("span");
    name.className = "product-name";
    name.textContent = p.description;
    td.append(name, " ");
  }
  const code = document.createElement("span");
  code.className = "product-code";
  code.textContent = p.stock_code;
  td.append(code);
  return td;
}

function rows(id, items, fill) {
  const body = $(id);
  body.replaceChildren();
  items.forEach((item, i) => {
    const tr = document.createElement("tr");
    tr.dataset.testid = id + "-row";
    fill(tr, item, i);
    body.appendChild(tr);
  });
}

function list(id, items, render) {
  const ul = $(id);
  ul.replaceChildren();
  for (const item of items) {
    const li = document.createElement("li");
    li.dataset.testid = id + "-item";
    li.textContent = render(item);
    ul.appendChild(li);
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// Revenue as bars against a value axis on the left, lines as a line (its highest value in the
// legend), one slot per epoch labelled by its start; each bar's value shows on hover.
function chart(epochs) {
  const el = $("chart");
  el.replaceChildren();
  text("chart-count", String(epochs.length));
  if (!epochs.length) return;
  const W = 800, H = 240, top = 12, bottom = 24, left = 86, right = 6;
  const slot = (W - left - right) / epochs.length;
  const maxRevenue = Math.max(1, ...epochs.map((e) => e.revenue_milli));
  const maxLines = Math.max(1, ...epochs.map((e) => e.lines));
  const y = (v, max) => top + (H - top - bottom) * (1 - Math.max(0, v) / max);
  for (let k = 0; k <= 4; k++) {
    const value = (maxRevenue * k) / 4;
    el.appendChild(svg("line", { class: "grid", x1: left, x2: W - right, y1: y(value, maxRevenue), y2: y(value, maxRevenue) }));
    const tick = svg("text", { class: "axis", x: left - 6, y: y(value, maxRevenue) + 4, "text-anchor": "end" });
    tick.textContent = moneyWhole(value);
    el.appendChild(tick);
  }
  const points = [];
  epochs.forEach((e, i) => {
    const x = left + i * slot;
    const bar = svg("rect", {
      class: "bar", x: x + slot * 0.15, width: Math.max(1, slot * 0.7),
      y: y(e.revenue_milli, maxRevenue), height: H - bottom - y(e.revenue_milli, maxRevenue),
    });
    const title = svg("title", {});
    title.textContent = `${e.epoch}: revenue ${money(e.revenue_milli)}, ${count(e.lines)} lines`;
    bar.appendChild(title);
    el.appendChild(bar);
    points.push(`${x + slot / 2},${y(e.lines, maxLines)}`);
  });
  el.appendChild(svg("polyline", { class: "line", points: points.join(" ") }));
  const label = (i, anchor) => {
    const t = svg("text", { class: "axis", x: left + (i + 0.5) * slot, y: H - 6, "text-anchor": anchor });
    t.textContent = epochs[i].epoch.replace("T", " ").slice(0, 16);
    el.appendChild(t);
  };
  label(0, "start");
  if (epochs.length > 2) label(Math.floor(epochs.length / 2), "middle");
  if (epochs.length > 1) label(epochs.length - 1, "end");
  text("chart-scale", `highest: revenue ${money(maxRevenue)}, ${count(maxLines)} lines`);
}

function render(view, state) {
  const s = view.state;
  const status = $("status");
  status.dataset.state = state;
  status.textContent = state === "finished" ? "run complete: final state" : "live";
  document.body.classList.remove("error");
  if (!s) {
    status.textContent = "waiting for the first committed epoch";
    return;
  }
  const h = view.health;
  text("last-epoch", s.epoch);
  text("last-commit-at", h.last_commit_at || NONE);
  text("total-revenue", money(s.totals.revenue_milli));
  text("total-lines", count(s.totals.lines));
  text("total-units", count(s.totals.units));
  text("total-invoices", count(s.totals.invoices));
  text("total-customers", count(s.totals.customers));
  text("total-epochs", count(s.epochs));
  const row = view.epochs.length ? view.epochs[view.epochs.length - 1] : null;
  text("epoch-label", row ? row.epoch : NONE);
  text("epoch-revenue", row ? money(row.revenue_milli) : NONE);
  text("epoch-lines", row ? count(row.lines) : NONE);
  text("epoch-invoices", row ? count(row.invoices) : NONE);
  rows("epoch-top", row ? row.top_products.slice(0, 5) : [], (tr, p) => {
    productCell(tr, p);
    cell(tr, money(p.revenue_milli), true);
  });
  rows("top-products", s.top_products.slice(0, 10), (tr, p, i) => {
    cell(tr, String(i + 1));
    productCell(tr, p);
    cell(tr, money(p.revenue_milli), true);
  });
  const countries = Object.entries(s.by_country)
    .sort((a, b) => b[1].revenue_milli - a[1].revenue_milli);
  rows("countries", countries, (tr, [name, c]) => {
    cell(tr, name);
    cell(tr, count(c.lines), true);
    cell(tr, money(c.revenue_milli), true);
  });
  chart(view.epochs);
  list("alerts", view.alerts, (a) => {
    const what = a.invoice ? `invoice ${a.invoice}` : a.customer ? `customer ${a.customer}` : a.key;
    const value = a.value_milli !== undefined ? ` (${money(a.value_milli)})` : "";
    return `${a.rule}: ${what}${value}, epoch ${a.opened_in}`;
  });
  text("open-alerts", count(s.alerts));
  const p = view.progress;
  text("records-per-sec", count(Math.round(h.records_per_sec)));
  text("records-read", count(h.records_read));
  text("late-lines", count(h.late_lines));
  text("watermark", (p && p.eventTime.watermark) || NONE);
  const reasons = Object.entries(h.dead_letters);
  list("dead-letters", reasons.length ? reasons : [["none", 0]], ([r, n]) => `${r}: ${count(n)}`);
  rows("lag", h.partitions, (tr, part) => {
    cell(tr, String(part.partition));
    cell(tr, part.lag === null ? "?" : count(part.lag), true);
    cell(tr, count(part.read), true);
  });
}

// The open epoch's running figures (`provisional` events; null when there is none), in a
// panel of their own that says they are provisional: never mixed into the committed figures.
function provisional(p) {
  const panel = $("provisional");
  panel.hidden = !p;
  if (!p) return;
  text("prov-title", p.epoch_seconds === 3600 ? "This hour so far" : "This epoch so far");
  text("prov-epoch", p.epoch);
  text("prov-as-of", p.as_of.slice(11, 19) + " UTC");
  text("prov-revenue", money(p.revenue_milli));
  text("prov-lines", count(p.lines));
  rows("prov-top", p.top_products, (tr, item, i) => {
    cell(tr, String(i + 1));
    productCell(tr, item);
    cell(tr, money(item.revenue_milli), true);
  });
}

// The stream dropped (the job stopped, or the network): no number stays on screen.
function lost() {
  const status = $("status");
  status.dataset.state = "error";
  status.textContent = "connection to the job lost: figures hidden until it is back";
  document.body.classList.add("error");
  for (const el of document.querySelectorAll("b[id], #last-commit-at, #open-alerts, #epoch-label, #chart-count")) {
    el.textContent = NONE;
  }
  for (const id of ["epoch-top", "top-products", "countries", "alerts", "dead-letters", "lag", "chart", "chart-scale", "prov-top"]) {
    $(id).replaceChildren();
  }
  $("provisional").hidden = true;
}

function connect() {
  const events = new EventSource("/events");
  events.addEventListener("epoch", (e) => render(JSON.parse(e.data), "live"));
  events.addEventListener("finished", (e) => render(JSON.parse(e.data), "finished"));
  events.addEventListener("provisional", (e) => provisional(JSON.parse(e.data)));
  events.onerror = lost;
}

connect();
