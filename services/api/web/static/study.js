// The study page: who and what, the series with their first image, the images of the chosen
// series with window presets, and downloads of the whole study with progress.
import {
  call, el, formatCount, formatDate, formatName, formatSex, formatSize, formatTime, getJson, reportError, say,
  setUpSession, SignedOut, thumbnail,
} from "./common.js";

const box = document.getElementById("message");
const uid = decodeURIComponent(location.pathname.split("/").pop());
const presets = JSON.parse(document.body.dataset.presets || "{}");
const viewerUrl = document.body.dataset.viewer;
const MEDIA = { "tar.zst": "application/zstd", zip: "application/zip", tar: "application/x-tar" };

setUpSession();
const back = sessionStorage.getItem("dicomflow.search");
if (back) document.getElementById("back").href = `/${back}`;

function facts(list, pairs) {
  list.replaceChildren(...pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

// ---- the study -----------------------------------------------------------------------

async function load() {
  let study;
  try {
    study = await getJson(`/v1/studies/${encodeURIComponent(uid)}`);
  } catch (err) {
    if (err.status === 404) say(box, "This study is not in the archive (it may have been removed, or the link is wrong).");
    else reportError(box, err);
    return;
  }
  const name = formatName(study.patient.patient_name);
  document.title = `${name} · ${formatDate(study.study_date)} · dicomflow`;
  document.getElementById("patient-name").textContent = name;
  facts(document.getElementById("patient-facts"), [
    ["Patient ID", study.patient.patient_id || "—"],
    ["Date of birth", formatDate(study.patient.birth_date)],
    ["Sex", formatSex(study.patient.sex)],
  ]);
  const time = formatTime(study.study_time);
  document.getElementById("study-title").textContent = study.study_description || "Study without a description";
  facts(document.getElementById("study-facts"), [
    ["Study date", formatDate(study.study_date) + (time ? `, ${time}` : "")],
    ["Modalities", study.modalities.join(", ") || "—"],
    ["Accession number", study.accession_number || "—"],
    ["Series", formatCount(study.series_count)],
    ["Images", formatCount(study.instance_count)],
    ["Size", formatSize(study.size_bytes)],
  ]);
  if (viewerUrl) {
    const link = document.getElementById("open-viewer");
    link.href = `${viewerUrl}?StudyInstanceUIDs=${encodeURIComponent(uid)}`;
    link.hidden = false;
  }
  document.getElementById("study").hidden = false;
  await showSeries(study.series);
}

// ---- series and images ---------------------------------------------------------------

const state = { series: null, images: [], index: 0, window: null };
const preview = document.getElementById("preview");
const caption = document.getElementById("preview-caption");
const slider = document.getElementById("image-slider");
const strip = document.getElementById("instances");

async function showSeries(series) {
  const list = document.getElementById("series");
  const cards = await Promise.all(
    series.map(async (s) => {
      let images = [];
      try {
        images = (await getJson(`/v1/studies/${encodeURIComponent(uid)}/series/${encodeURIComponent(s.series_uid)}/instances`)).items;
      } catch (err) {
        if (err instanceof SignedOut) throw err;
      }
      return { s, images };
    }),
  ).catch(() => []);
  list.replaceChildren(
    ...cards.map(({ s, images }) => {
      const first = images.find((i) => i.thumbnail_url);
      const title = `Series ${s.series_number ?? "—"} · ${s.modality || "?"}`;
      const button = el(
        "button",
        { type: "button", class: "series-card", "aria-pressed": "false", onclick: () => choose(s, images, button) },
        thumbnail(first?.thumbnail_url, 96),
        el("span", { class: "title" }, title),
        el("span", { class: "desc" }, s.series_description || "—"),
        el("span", { class: "sub" }, `${formatCount(s.instance_count)} ${s.instance_count === 1 ? "image" : "images"} · ${formatSize(s.size_bytes)}`),
      );
      return el("li", {}, button);
    }),
  );
  document.getElementById("series-section").hidden = cards.length === 0;
  const firstWithImages = list.querySelector("button");
  if (firstWithImages) firstWithImages.click();
}

function choose(series, images, button) {
  for (const other of document.querySelectorAll(".series-card")) other.setAttribute("aria-pressed", String(other === button));
  state.series = series;
  state.images = images.filter((i) => i.preview_url);
  document.getElementById("viewer-title").textContent =
    `Images of series ${series.series_number ?? "—"}${series.series_description ? ` — ${series.series_description}` : ""}`;
  document.getElementById("viewer").hidden = state.images.length === 0;
  if (state.images.length === 0) return;
  slider.max = String(state.images.length);
  strip.replaceChildren(
    ...state.images.map((image, n) =>
      el(
        "li",
        {},
        el(
          "button",
          { type: "button", "aria-label": `Image ${image.instance_number ?? n + 1}`, onclick: () => show(n) },
          thumbnail(image.thumbnail_url, 64, "frame-thumb"),
        ),
      ),
    ),
  );
  show(0);
}

function windowQuery() {
  return state.window ? `?wc=${encodeURIComponent(state.window.wc)}&ww=${encodeURIComponent(state.window.ww)}` : "";
}

function describeWindow() {
  if (!state.window) return "window as stored in the image";
  const label = state.window.label ? `${state.window.label}, ` : "";
  return `window ${label}centre ${state.window.wc}, width ${state.window.ww}`;
}

function show(index) {
  if (!state.images.length) return;
  state.index = Math.min(Math.max(index, 0), state.images.length - 1);
  const image = state.images[state.index];
  slider.value = String(state.index + 1);
  slider.setAttribute("aria-valuetext", `Image ${state.index + 1} of ${state.images.length}`);
  strip.querySelectorAll("button").forEach((b, n) => b.toggleAttribute("aria-current", n === state.index));
  preview.alt = `Image ${image.instance_number ?? state.index + 1} of series ${state.series.series_number ?? ""}, ${describeWindow()}`;
  preview.closest("figure").setAttribute("aria-busy", "true");
  preview.src = image.preview_url + windowQuery();
}

preview.addEventListener("load", () => {
  preview.closest("figure").removeAttribute("aria-busy");
  caption.textContent = `Image ${state.index + 1} of ${state.images.length} · ${describeWindow()}`;
});
preview.addEventListener("error", async () => {
  preview.closest("figure").removeAttribute("aria-busy");
  caption.textContent = "This image cannot be shown.";
  try {
    await call("/v1/session"); // a 401 here means the session ended: back to sign-in
  } catch {
    /* the message above stands */
  }
});
slider.addEventListener("input", () => show(Number(slider.value) - 1));
document.getElementById("prev-image").addEventListener("click", () => show(state.index - 1));
document.getElementById("next-image").addEventListener("click", () => show(state.index + 1));

const presetBox = document.getElementById("presets");
const wcInput = document.getElementById("wc");
const wwInput = document.getElementById("ww");

function presetRadio(key, label, window) {
  const id = `preset-${key}`;
  const input = el("input", { type: "radio", name: "preset", id, value: key, checked: key === "stored" });
  input.addEventListener("change", () => {
    state.window = window;
    wcInput.value = window ? String(window.wc) : "";
    wwInput.value = window ? String(window.ww) : "";
    show(state.index);
  });
  return el("span", { class: "preset" }, input, el("label", { for: id }, label));
}

presetBox.replaceChildren(
  presetRadio("stored", "As stored", null),
  ...Object.entries(presets).map(([key, p]) => presetRadio(key, p.label, { label: p.label, wc: p.wc, ww: p.ww })),
);

document.getElementById("custom-window").addEventListener("submit", (event) => {
  event.preventDefault();
  const wc = Number.parseFloat(wcInput.value);
  const ww = Number.parseFloat(wwInput.value);
  if (!Number.isFinite(wc) || !Number.isFinite(ww) || ww < 1 || Math.abs(wc) > 1e6 || ww > 1e6) {
    say(box, "Window: give a centre and a width of at least 1 (numbers, e.g. centre 40, width 400).");
    (Number.isFinite(wc) ? wwInput : wcInput).focus();
    return;
  }
  say(box, "");
  for (const radio of presetBox.querySelectorAll("input")) radio.checked = false;
  state.window = { label: "", wc, ww };
  show(state.index);
});

// ---- downloads -----------------------------------------------------------------------

const panel = document.getElementById("download");
const bar = document.getElementById("download-bar");
const text = document.getElementById("download-text");
const label = document.getElementById("download-label");
const cancel = document.getElementById("download-cancel");
const buttons = document.querySelectorAll("[data-format]");
let controller = null;
const DOWNLOAD_ERRORS = {
  404: "This study cannot be downloaded: it was not found in the archive (it may have changed or been removed). Reload the page and try again.",
  502: "This study cannot be downloaded right now: some of its images could not be read from storage. Tell your administrator.",
  503: "Downloads are not available right now (the archive service does not answer). Try again in a few minutes.",
  cut: "The download was interrupted. Check the network connection and try again.",
};

/** The file name the server suggests (RFC 6266: filename* in UTF-8 first). */
export function suggestedName(header, fallback) {
  const star = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(header || "");
  if (star) {
    try {
      return decodeURIComponent(star[1].trim());
    } catch {
      /* use the plain name */
    }
  }
  const plain = /filename\s*=\s*"([^"]+)"/i.exec(header || "");
  return plain ? plain[1] : fallback;
}

function seconds(s) {
  if (!Number.isFinite(s)) return "";
  if (s < 60) return `about ${Math.max(1, Math.round(s))} s left`;
  return `about ${Math.round(s / 60)} min left`;
}

// `estimated`: `total` is the study's size before packing (X-Archive-Instance-Bytes), sent
// while the server still builds a tar or tar.zst (no Content-Length): a tar is a little
// larger (a header per file), a tar.zst smaller. Shown as "of about", never passed.
function progress(received, total, started, estimated = false) {
  const elapsed = (performance.now() - started) / 1000;
  const speed = elapsed > 0 ? received / elapsed : 0;
  const scale = estimated ? Math.max(total, received) : total;
  const of = estimated ? "of about" : "of";
  const parts = [scale ? `${formatSize(received)} ${of} ${formatSize(scale)}` : formatSize(received)];
  if (elapsed > 0.5) parts.push(`${formatSize(speed)}/s`);
  if (scale && speed > 0 && elapsed > 0.5) parts.push(seconds((scale - received) / speed));
  if (scale) {
    bar.max = scale;
    bar.value = received;
  }
  text.textContent = parts.join(" · ");
}

function save(blob, name) {
  const href = URL.createObjectURL(blob);
  const link = el("a", { href, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60_000);
}

async function download(format) {
  say(box, "");
  controller = new AbortController();
  buttons.forEach((b) => (b.disabled = true));
  panel.hidden = false;
  cancel.hidden = false;
  label.textContent = `Preparing the ${format.toUpperCase()} archive…`;
  bar.removeAttribute("value");
  bar.removeAttribute("max");
  text.textContent = "";
  const started = performance.now();
  try {
    const url = `/v1/studies/${encodeURIComponent(uid)}/archive?format=${encodeURIComponent(format)}`;
    const response = await call(url, { signal: controller.signal });
    const total = Number(response.headers.get("content-length")) || 0;
    // Streamed while it is built (no Content-Length): the study's size as the scale.
    const expected = total ? 0 : Number(response.headers.get("x-archive-instance-bytes")) || 0;
    const estimated = !total && expected > 0;
    const name = suggestedName(response.headers.get("content-disposition"), `study.${format}`);
    label.textContent = `Downloading ${name}`;
    if (total || expected) bar.max = total || expected;
    const reader = response.body.getReader();
    const parts = []; // Blobs of up to 32 MB: the browser may keep them on disk, not in memory
    let chunks = [];
    let pending = 0;
    let received = 0;
    let shown = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      pending += value.length;
      received += value.length;
      if (pending >= 32 * 1024 * 1024) {
        parts.push(new Blob(chunks));
        chunks = [];
        pending = 0;
      }
      if (performance.now() - shown > 200) {
        shown = performance.now();
        progress(received, total || expected, started, estimated);
      }
    }
    if (total && received !== total) throw new Error("short");
    progress(received, total || received, started);
    parts.push(new Blob(chunks));
    save(new Blob(parts, { type: MEDIA[format] || "application/octet-stream" }), name);
    label.textContent = `Saved ${name}`;
    bar.max = 1;
    bar.value = 1;
    const took = (performance.now() - started) / 1000;
    text.textContent = `${formatSize(received)} in ${took.toFixed(1)} s (${formatSize(received / Math.max(took, 0.001))}/s)`;
  } catch (err) {
    if (err.name === "AbortError") {
      label.textContent = "Download cancelled.";
    } else if (err instanceof SignedOut) {
      return;
    } else {
      label.textContent = "Download failed.";
      say(box, DOWNLOAD_ERRORS[err.status] || (err.status !== undefined ? err.message : DOWNLOAD_ERRORS.cut));
    }
    bar.removeAttribute("value");
    text.textContent = "";
  } finally {
    controller = null;
    cancel.hidden = true;
    buttons.forEach((b) => (b.disabled = false));
  }
}

// ---- de-identified copy (ops and admin) ----------------------------------------------

const deid = document.getElementById("deid");
const deidStatus = document.getElementById("deid-status");
const deidLink = document.getElementById("deid-link");
const deidStart = document.getElementById("deid-start");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function exportDeidentified(event) {
  event.preventDefault();
  say(box, "");
  deidStart.disabled = true;
  deidLink.hidden = true;
  deidStatus.textContent = "Asking for a de-identified copy…";
  try {
    const body = {
      study_uids: [uid],
      profile: {
        modified_dates: document.getElementById("deid-dates").checked,
        clean_descriptors: document.getElementById("deid-descriptions").checked,
      },
      include_burned_in: document.getElementById("deid-burned").checked,
      format: "zip",
    };
    const created = await call("/v1/exports", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    const id = (await created.json()).export_id;
    for (;;) {
      const job = await getJson(`/v1/exports/${encodeURIComponent(id)}`);
      const p = job.progress;
      if (job.status === "completed") {
        const left = p.excluded ? ` ${formatCount(p.excluded)} left out: they may show the patient's name in the picture.` : "";
        const failed = p.failed ? ` ${formatCount(p.failed)} could not be read.` : "";
        deidStatus.textContent = `Ready: ${formatCount(p.exported)} of ${formatCount(p.total)} images, ${formatSize(job.archive_size)}.${left}${failed}`;
        deidLink.href = job.archive_url;
        deidLink.hidden = false;
        return;
      }
      if (job.status === "failed") {
        deidStatus.textContent = "The de-identified copy could not be made. Tell your administrator.";
        return;
      }
      deidStatus.textContent = job.status === "queued"
        ? "Waiting for another copy to finish…"
        : `Working: ${formatCount(p.processed)} of ${formatCount(p.total)} images`;
      await sleep(1000);
    }
  } catch (err) {
    deidStatus.textContent = "";
    reportError(box, err);
  } finally {
    deidStart.disabled = false;
  }
}

if (["ops", "admin"].includes(document.body.dataset.role)) {
  deid.hidden = false;
  document.getElementById("deid-form").addEventListener("submit", exportDeidentified);
}

buttons.forEach((button) => button.addEventListener("click", () => download(button.dataset.format)));
cancel.addEventListener("click", () => controller?.abort());

load();
