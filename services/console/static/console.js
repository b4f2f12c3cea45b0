// The console's only script (no inline scripts: the Content-Security-Policy forbids them).
// Live parts listen to server-sent events and change only the rows an event names.
"use strict";

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fmt(x) {
  return typeof x === "number" ? x.toFixed(4) : "–";
}

function live(source, label) {
  const badge = document.getElementById("live");
  source.addEventListener("open", () => { badge.textContent = label || "live"; badge.className = "live on"; });
  source.addEventListener("error", () => { badge.textContent = "reconnecting…"; badge.className = "live off"; });
  source.addEventListener("busy", (e) => { badge.textContent = JSON.parse(e.data).message; source.close(); });
}

function experimentsPage() {
  const body = document.querySelector("#experiments tbody");
  const source = new EventSource("/events/experiments");
  live(source);
  source.addEventListener("row", (e) => {
    const r = JSON.parse(e.data);
    let tr = document.getElementById("exp-" + r.id);
    const fresh = !tr;
    if (fresh) { tr = document.createElement("tr"); tr.id = "exp-" + r.id; }
    tr.dataset.status = r.status;
    tr.dataset.done = r.done;
    tr.dataset.started = r.started;
    tr.replaceChildren();
    const name = document.createElement("td");
    const link = document.createElement("a");
    link.href = "/experiments/" + encodeURIComponent(r.id);
    link.textContent = r.name + " (" + r.id + ")";
    name.appendChild(link);
    tr.append(name, cell(r.status, "status " + r.status), cell(r.done + "/" + r.max, "progress"), cell(r.running),
      cell(fmt(r.best), "best"), cell(r.source), cell(r.author), cell(new Date(r.started).toLocaleString()));
    if (fresh) {  // newest first
      const after = Array.from(body.children).find((row) => row.dataset.started < r.started);
      body.insertBefore(tr, after || null);
    }
    document.getElementById("empty").hidden = true;
  });
}

function experimentPage() {
  const id = document.body.dataset.experiment;
  const metric = document.body.dataset.metric;
  const body = document.querySelector("#trials tbody");
  const trials = new Map();
  let maximize = true;
  const plot = document.getElementById("history");

  function draw() {
    const done = Array.from(trials.values()).filter((t) => typeof t.score === "number").sort((a, b) => a.number - b.number);
    const best = [];
    let running = null;
    for (const t of done) {
      running = running === null ? t.score : (maximize ? Math.max(running, t.score) : Math.min(running, t.score));
      best.push(running);
    }
    const x = done.map((t) => t.number);
    window.Plotly.react(plot, [
      { x, y: done.map((t) => t.score), mode: "markers", name: "trial", type: "scatter" },
      { x, y: best, mode: "lines", name: "best so far", type: "scatter", line: { shape: "hv" } },
    ], {
      title: { text: "Optimisation history" }, xaxis: { title: { text: "trial" } }, yaxis: { title: { text: metric } },
      margin: { t: 40, r: 10, b: 40, l: 60 }, height: 320,
    }, { displaylogo: false, responsive: true });
    plot.dataset.points = String(done.length);
    document.getElementById("done").textContent = String(trials.size);
    document.getElementById("best").textContent = best.length ? fmt(best[best.length - 1]) : "–";
  }

  function setStatus(status) {
    const el = document.getElementById("status");
    el.textContent = status;
    el.className = "status " + status;
    const cancel = document.getElementById("cancel-form");
    if (cancel && status !== "running") cancel.hidden = true;
  }

  const source = new EventSource("/events/experiments/" + encodeURIComponent(id));
  live(source);
  source.addEventListener("submitted", (e) => {
    const s = JSON.parse(e.data);
    maximize = s.maximize;
    document.getElementById("max").textContent = String(s.max_trials);
  });
  source.addEventListener("trial", (e) => {
    const t = JSON.parse(e.data);
    trials.set(t.number, t);
    let tr = document.getElementById("trial-" + t.number);
    if (!tr) {
      tr = document.createElement("tr");
      tr.id = "trial-" + t.number;
      const after = Array.from(body.children).find((row) => Number(row.dataset.number) > t.number);
      body.insertBefore(tr, after || null);
    }
    tr.dataset.number = t.number;
    tr.dataset.status = t.status;
    const show = (v) => (typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v);
    const params = Object.entries(t.params).map(([k, v]) => k + "=" + show(v)).join(", ");
    tr.replaceChildren(cell(t.number), cell(t.status, "status " + t.status), cell(fmt(t.score), "score"),
      cell(params + (t.error ? " — " + t.error : "")), cell(t.duration_s), cell(t.runner));
    draw();
  });
  source.addEventListener("completed", (e) => { setStatus(JSON.parse(e.data).status); });
  source.addEventListener("cancelled", (e) => {
    const c = JSON.parse(e.data);
    setStatus(c.status);
    document.getElementById("outcome").textContent = c.status + " by " + c.by + (c.reason ? ": " + c.reason : "");
  });
  source.addEventListener("evaluation", (e) => {
    const v = JSON.parse(e.data);
    document.getElementById("outcome").textContent = "decision: " + v.decision + (v.reasons.length ? " — " + v.reasons.join("; ") : "");
  });
  source.addEventListener("deployment", (e) => {
    const d = JSON.parse(e.data);
    document.getElementById("outcome").textContent += " · deployment " + d.status + ": " + d.message;
  });
  draw();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form.confirm")) {
    form.addEventListener("submit", (e) => { if (!window.confirm(form.dataset.confirm)) e.preventDefault(); });
  }
  const page = document.body.dataset.page;
  if (page === "experiments") experimentsPage();
  if (page === "experiment") experimentPage();
});
