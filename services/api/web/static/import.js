// The import page: live progress from GET /v1/imports/{id}/events (Server-Sent Events; the
// browser reconnects by itself with Last-Event-ID), the breakdown from .../stats, and the
// pause, resume and cancel buttons.
import {
  call, el, formatCount, formatDate, formatName, formatSize, getJson, reportError, say, setUpSession,
} from "./common.js";

const taskId = location.pathname.split("/").pop();
const base = `/v1/imports/${encodeURIComponent(taskId)}`;
const box = document.getElementById("message");
const state = document.getElementById("state");
const progress = document.getElementById("progress");
const done = document.getElementById("done");
const rate = document.getElementById("rate");
const buttons = {
  pause: document.getElementById("pause"),
  resume: document.getElementById("resume"),
  cancel: document.getElementById("cancel"),
};
const STATUS_WORDS = {
  pending: "Waiting to start",
  running: "Importing",
  paused: "Paused",
  cancelling: "Cancelling: finishing the files already being read",
  cancelled: "Cancelled",
  completed: "Completed",
  failed: "Failed",
};
const ENDED = new Set(["completed", "failed", "cancelled"]);
const STATS_EVERY_MS = 3000;
let statsAt = 0;
let statsTimer = null;

setUpSession();

function show(task) {
  document.getElementById("source").textContent = task.source_path;
  state.textContent = STATUS_WORDS[task.status] || task.status;
  if (task.status === "failed" && task.error) state.textContent += `: ${task.error}`;
  state.dataset.status = task.status;
  const c = task.counters;
  for (const node of document.querySelectorAll("[data-counter]")) {
    node.textContent = formatCount(c[node.dataset.counter]);
  }
  const finished = c.files_scanned - c.pending;
  progress.max = Math.max(1, c.files_scanned);
  progress.value = finished;
  done.textContent = `${formatCount(finished)} of ${formatCount(c.files_scanned)} files done`
    + (task.scan_completed ? "" : " (still looking for files)");
  buttons.pause.hidden = !["pending", "running"].includes(task.status);
  buttons.resume.hidden = task.status !== "paused";
  buttons.cancel.hidden = !["pending", "running", "paused"].includes(task.status);
  // While files are still being read a failure may yet come; once the task ended, none will.
  document.getElementById("failures-none").textContent = ENDED.has(task.status)
    ? "None: every file that was read was imported." : "None so far.";
}

function row(...cells) {
  return el("tr", {}, cells.map(([text, cls]) => el("td", { class: cls }, text)));
}

function showStats(stats) {
  const r = stats.rates;
  rate.textContent = r.recent_files_per_second > 0
    ? `${r.recent_files_per_second.toFixed(1)} files a second` + (r.eta_seconds ? `, about ${Math.ceil(r.eta_seconds / 60)} min left` : "")
    : "";
  document.querySelector("#patients tbody").replaceChildren(...stats.patients.map((p) => row(
    [formatName(p.patient_name), "patient"], [p.patient_id], [formatDate(p.birth_date), "nowrap"],
    [p.new_to_index ? "Yes" : "No"], [formatCount(p.studies), "num"], [formatCount(p.new_instances), "num"],
    [formatCount(p.duplicates), "num"], [formatSize(p.size_bytes), "num"],
  )));
  document.getElementById("patients-more").textContent = stats.patients_total > stats.patients.length
    ? `${formatCount(stats.patients.length)} of ${formatCount(stats.patients_total)} patients shown (most images first).` : "";
  document.querySelector("#modalities tbody").replaceChildren(...stats.modalities.map((m) => row(
    [m.modality || "(none)"], [formatCount(m.new_instances), "num"], [formatCount(m.duplicates), "num"],
    [formatSize(m.size_bytes), "num"],
  )));
  document.querySelector("#failures tbody").replaceChildren(...stats.failure_groups.map((g) => row(
    [g.reason || "(no reason given)"], [g.stage || ""], [formatCount(g.files), "num"], [g.example],
  )));
  // An empty table with only its header reads as "something is missing"; say so in words.
  const noFailures = stats.failure_groups.length === 0;
  document.getElementById("failures").hidden = noFailures;
  document.getElementById("failures-none").hidden = !noFailures;
}

async function refreshStats(now = false) {
  const wait = statsAt + STATS_EVERY_MS - Date.now();
  if (!now && wait > 0) {
    statsTimer ??= setTimeout(() => { statsTimer = null; refreshStats(true); }, wait);
    return;
  }
  statsAt = Date.now();
  try {
    showStats(await getJson(`${base}/stats`));
  } catch (err) {
    reportError(box, err);
  }
}

function follow() {
  const source = new EventSource(`${base}/events`);
  const take = (event) => {
    say(box, "");
    show(JSON.parse(event.data));
    refreshStats(event.type === "end");
  };
  let ended = false;
  source.addEventListener("progress", take);
  // The server closes the stream after `end`; closing ours when that close arrives (the
  // "error" that precedes a reconnection) rather than at once never cuts a response short.
  source.addEventListener("end", (event) => {
    ended = true;
    take(event);
  });
  source.addEventListener("error", () => {
    if (ended) {
      source.close();
    } else if (source.readyState === EventSource.CLOSED) {
      say(box, "Live progress stopped. Reload the page to follow the import again.");
    }
  });
}

for (const [action, button] of Object.entries(buttons)) {
  button.addEventListener("click", async () => {
    if (action === "cancel" && !confirm("Cancel this import? Files already read stay imported.")) return;
    button.disabled = true;
    try {
      const response = await call(`${base}/${action}`, { method: "POST", headers: { Accept: "application/json" } });
      show(await response.json());
    } catch (err) {
      reportError(box, err);
    } finally {
      button.disabled = false;
    }
  });
}

getJson(base).then((task) => {
  show(task);
  refreshStats(true);
  if (!ENDED.has(task.status)) follow();
}).catch((err) => reportError(box, err));
