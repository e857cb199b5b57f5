// bbsync dashboard: plain JavaScript, no dependencies. Everything comes
// from /api/v1 with the session cookie; every change carries the
// session's CSRF token in X-CSRF-Token. Text from the node is only ever
// put into the page with textContent (never as HTML).
"use strict";

const state = { csrf: null, page: "overview", objOffset: 0, objLimit: 50, jobs: new Map(), lastEvent: null };

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === undefined || c === null ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows, empty) {
  const t = $(tbody);
  t.replaceChildren(...rows);
  if (rows.length === 0 && empty) {
    const tr = row([empty]);
    tr.firstChild.colSpan = 8;
    tr.firstChild.className = "muted";
    t.appendChild(tr);
  }
}

function size(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = Number(n || 0);
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + " " + u[i];
}

function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : ""; }

function flash(text, bad) {
  const f = $("flash");
  f.textContent = text;
  f.className = "flash" + (bad ? " error" : "");
  clearTimeout(flash.t);
  flash.t = setTimeout(() => f.classList.add("hidden"), 8000);
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") opts.headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  let v = null;
  try { v = await r.json(); } catch (_) { v = null; }
  if (!r.ok) {
    if (r.status === 401) showLogin();
    throw new Error((v && v.error) || ("HTTP " + r.status));
  }
  return v;
}

function showLogin() {
  $("login").classList.remove("hidden");
  for (const p of document.querySelectorAll("section.page")) p.classList.add("hidden");
}

function show(page) {
  state.page = page;
  for (const p of document.querySelectorAll("section.page")) p.classList.toggle("hidden", p.id !== "page-" + page);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  refresh().catch((e) => flash(e.message, true));
}

async function refresh() {
  switch (state.page) {
    case "overview": return loadOverview();
    case "trust": return loadTrust();
    case "sync": return loadSync();
    case "objects": return loadObjects();
    case "backups": return loadBackups();
    case "events": return loadEvents();
  }
}

async function loadOverview() {
  const s = await api("GET", "/api/v1/status");
  $("ov-name").textContent = s.name;
  $("ov-id").textContent = s.instance_id;
  $("ov-version").textContent = s.version;
  $("ov-uptime").textContent = s.uptime_secs + " s";
  $("ov-objects").textContent = s.store.objects + " live, " + s.store.deleted + " deleted, " + s.store.incomplete + " incomplete";
  $("ov-kinds").textContent = Object.entries(s.store.objects_by_kind).map(([k, n]) => n + " " + k).join(", ") || "none";
  $("ov-bytes").textContent = size(s.store.plaintext_bytes) + " plaintext in " + s.store.chunks + " chunks (" + size(s.store.chunk_bytes) + "), " + s.store.packs + " pack files (" + size(s.store.pack_bytes) + " on disk)";
  $("ov-seq").textContent = s.store.seq;
  $("ov-trusted").textContent = s.store.trusted;
  $("ov-peers").textContent = s.peers_connected;
  $("ov-jobs").textContent = s.jobs_running;
  $("ov-addrs").replaceChildren(...s.addresses.map((a) => el("div", a)));
  $("ov-card").value = s.card;
}

async function loadTrust() {
  const list = await api("GET", "/api/v1/trust");
  fill("trust-rows", list.map((t) => {
    const acts = el("span");
    const b = (label, cls, fn) => { const x = el("button", label, cls); x.addEventListener("click", fn); acts.appendChild(x); };
    b("Clone configuration from peer", "secondary", () => startJob({ kind: "clone", instance: t.instance_id, only: ["config"] }));
    b("Clone full BBS from peer", "secondary", () => startJob({ kind: "clone", instance: t.instance_id }));
    b("Force refresh and re-key peer", "secondary", () => refreshPeer(t));
    b("Remove", "danger", async () => {
      if (!confirm("Remove " + t.name + " from the trust table?")) return;
      await api("DELETE", "/api/v1/trust/" + encodeURIComponent(t.instance_id));
      flash("removed " + t.name + "; run a re-key to drop its envelope entries");
      loadTrust();
    });
    return row([t.name, el("span", t.instance_id.slice(0, 16), "mono"), t.role, acts]);
  }), "no trusted instances");
}

async function refreshPeer(t) {
  // Re-key first (envelope entries for every trusted instance), then fetch
  // what this node lacks from that peer.
  const r = await api("POST", "/api/v1/rekey", { dry_run: false });
  flash("re-key: " + r.changed.length + " envelopes changed");
  await startJob({ kind: "clone", instance: t.instance_id });
}

async function startJob(spec) {
  try {
    const j = await api("POST", "/api/v1/jobs", spec);
    flash("job " + j.id + " (" + j.kind + ") started");
    state.jobs.set(j.id, j);
    return j;
  } catch (e) { flash(e.message, true); }
}

function jobRow(j) {
  const p = el("progress");
  if (j.bytes_total) { p.max = j.bytes_total; p.value = j.bytes_done; }
  else if (j.items_total) { p.max = j.items_total; p.value = j.items_done; }
  else if (j.status !== "running") { p.max = 1; p.value = 1; }
  const log = (j.log || []).slice(-1)[0] || "";
  const st = el("span", j.status, j.status === "failed" ? "bad" : (j.status === "succeeded" ? "ok" : ""));
  const tr = row([j.id, j.kind, st, j.phase, p, j.error || log]);
  tr.dataset.job = j.id;
  return tr;
}

async function loadSync() {
  const p = await api("GET", "/api/v1/peers");
  fill("up-rows", p.upstreams.map((u) => row([
    el("span", (u.addr || "") + " " + (u.instance || "").slice(0, 16), "mono"), u.state, u.cursor,
    u.lag_changes !== undefined ? u.lag_changes + " changes / " + Number(u.lag_secs || 0).toFixed(1) + " s" : "",
    u.applied === undefined ? "" : u.applied, u.last_error || ""])), "no upstreams");
  fill("peer-rows", p.connected.map((c) => row([el("span", c.peer_id.slice(0, 20), "mono"), c.name || "", c.trust_role || "untrusted",
    el("span", c.addr, "mono"), when(c.last_seen_ms)])), "no peers connected");
  const jobs = await api("GET", "/api/v1/jobs");
  fill("job-rows", jobs.map(jobRow), "no jobs yet");
}

async function loadObjects() {
  const q = new URLSearchParams({ offset: state.objOffset, limit: state.objLimit });
  if ($("obj-kind").value) q.set("kind", $("obj-kind").value);
  if ($("obj-name").value) q.set("name", $("obj-name").value);
  const r = await api("GET", "/api/v1/objects?" + q);
  fill("obj-rows", r.items.map((o) => row([el("span", o.id.slice(0, 16), "mono"), o.kind, o.name, o.version, size(o.size), o.state])), "no objects");
  const end = Math.min(r.offset + r.items.length, r.total);
  $("obj-page").textContent = r.total ? (r.offset + 1) + "-" + end + " of " + r.total : "0 of 0";
  $("obj-prev").disabled = r.offset === 0;
  $("obj-next").disabled = end >= r.total;
}

async function loadBackups() {
  const b = await api("GET", "/api/v1/backups");
  $("bk-repo").textContent = b.repo + (b.exists ? "" : " (not created yet)");
  fill("bk-rows", b.snapshots.map((s) => {
    const acts = el("span");
    const btn = (label, cls, fn) => { const x = el("button", label, cls); x.addEventListener("click", fn); acts.appendChild(x); };
    btn("Verify", "secondary", () => api("POST", "/api/v1/backups/" + encodeURIComponent(s.id) + "/verify", { read_data: true }).then((j) => flash("verify job " + j.id + " started")).catch((e) => flash(e.message, true)));
    btn("Restore", "secondary", () => {
      if (!confirm("Restore snapshot " + s.id + " into this store? (a safety snapshot is taken first)")) return;
      api("POST", "/api/v1/backups/" + encodeURIComponent(s.id) + "/restore", {}).then((j) => flash("restore job " + j.id + " started")).catch((e) => flash(e.message, true));
    });
    const dl = el("a", "Download", "");
    dl.href = "/api/v1/backups/" + encodeURIComponent(s.id) + "/download";
    acts.appendChild(dl);
    btn("Delete", "danger", async () => {
      if (!confirm("Delete snapshot " + s.id + "?")) return;
      try { await api("DELETE", "/api/v1/backups/" + encodeURIComponent(s.id)); flash("deleted " + s.id); loadBackups(); } catch (e) { flash(e.message, true); }
    });
    const tr = row([el("span", s.id, "mono"), s.created, s.objects, size(s.plaintext_bytes), (s.tags || []).join(", "), acts]);
    tr.className = "snapshot";
    return tr;
  }), "no snapshots");
  const sch = await api("GET", "/api/v1/backups/schedules");
  fill("sch-rows", sch.map((s) => row([s.cron, el("span", s.repo, "mono"), s.next_run || "never"])), "no schedules ([[backup]] in config.toml)");
  const rst = await api("GET", "/api/v1/backups/restores");
  fill("rst-rows", rst.map((r) => row([when(r.time_ms), r.snapshot || r.asked, r.restored, r.error || ""])), "no restores yet");
  const jobs = (await api("GET", "/api/v1/jobs")).filter((j) => ["backup", "backup-verify", "restore", "prune"].includes(j.kind));
  $("bk-jobs").replaceChildren(...jobs.map((j) => el("li", "#" + j.id + " " + j.kind + " " + j.status + (j.error ? ": " + j.error : (j.result && j.result.snapshot ? ": snapshot " + j.result.snapshot : "")))));
}

async function loadEvents() {
  const list = await api("GET", "/api/v1/log?limit=300");
  $("ev-list").replaceChildren(...list.reverse().map(evItem));
}

function evItem(e) {
  return el("li", "#" + e.id + " " + when(e.time_ms) + " " + e.kind + " " + JSON.stringify(e.data));
}

function onEvent(e) {
  if (state.page === "events") $("ev-list").prepend(evItem(e));
  if (e.kind === "job.finished") {
    const d = e.data;
    flash("job " + d.id + " (" + d.kind + ") " + d.status + (d.error ? ": " + d.error : ""), d.status === "failed");
    refresh().catch(() => {});
  } else if (e.kind === "job.progress" && state.page === "sync") {
    const tr = document.querySelector('#job-rows tr[data-job="' + Number(e.data.id) + '"]');
    if (tr) tr.replaceWith(jobRow(Object.assign({ log: [] }, e.data)));
    else loadSync().catch(() => {});
  } else if (e.kind === "job.started" || e.kind.startsWith("trust.") || e.kind === "backup.deleted") {
    refresh().catch(() => {});
  }
}

function listen() {
  // EventSource resends Last-Event-ID itself when it reconnects.
  const es = new EventSource("/api/v1/events");
  const kinds = ["job.started", "job.progress", "job.log", "job.finished", "trust.added", "trust.removed", "rekey", "backup.deleted", "login", "gap"];
  for (const k of kinds) es.addEventListener(k, (m) => {
    if (k === "gap") { flash("some events were missed; reloading", true); refresh().catch(() => {}); return; }
    try { onEvent(JSON.parse(m.data)); } catch (_) { /* ignore */ }
  });
  es.onopen = () => { $("live").textContent = "live"; };
  es.onerror = () => { $("live").textContent = "reconnecting..."; };
}

function wire() {
  $("trust-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/api/v1/trust", { card: $("trust-card").value.trim(), role: $("trust-role").value });
      flash((r.updated ? "updated " : "trusted ") + r.name + " as " + r.role);
      $("trust-card").value = "";
      loadTrust();
    } catch (e) { flash(e.message, true); }
  });
  const rekey = (dry) => async () => {
    try {
      const r = await api("POST", "/api/v1/rekey", { dry_run: dry });
      $("rekey-out").textContent = (dry ? "would change " : "changed ") + r.changed.length + " envelopes (" + r.entries_added + " entries added, " + r.entries_dropped + " dropped); " + r.exposed.length + " objects readable by instances no longer trusted";
    } catch (e) { flash(e.message, true); }
  };
  $("rekey-dry").addEventListener("click", rekey(true));
  $("rekey-apply").addEventListener("click", rekey(false));
  $("clone-form").addEventListener("submit", (ev) => { ev.preventDefault(); startJob({ kind: "clone", addr: $("clone-addr").value.trim() }); });
  $("fetch-missing").addEventListener("click", () => startJob({ kind: "fetch-missing" }));
  $("obj-form").addEventListener("submit", (ev) => { ev.preventDefault(); state.objOffset = 0; loadObjects().catch((e) => flash(e.message, true)); });
  $("obj-prev").addEventListener("click", () => { state.objOffset = Math.max(0, state.objOffset - state.objLimit); loadObjects(); });
  $("obj-next").addEventListener("click", () => { state.objOffset += state.objLimit; loadObjects(); });
  $("backup-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const tag = $("bk-tag").value.trim();
    try {
      const j = await api("POST", "/api/v1/backups", { description: $("bk-desc").value, tags: tag ? [tag] : [] });
      flash("backup job " + j.id + " started");
    } catch (e) { flash(e.message, true); }
  });
  $("bk-verify-all").addEventListener("click", () => api("POST", "/api/v1/backups/all/verify", {}).then((j) => flash("verify job " + j.id + " started")).catch((e) => flash(e.message, true)));
  window.addEventListener("hashchange", () => show((location.hash || "#overview").slice(1)));
}

async function start() {
  wire();
  try {
    const s = await api("GET", "/api/v1/session");
    state.csrf = s.csrf;
  } catch (_) { showLogin(); return; }
  document.body.dataset.ready = "1";
  listen();
  show((location.hash || "#overview").slice(1));
}

document.addEventListener("DOMContentLoaded", start);
