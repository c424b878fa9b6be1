// The search page: the form's values live in the address (so a search can be bookmarked,
// and survives signing in again), the results come from GET /v1/studies.
import {
  el, formatCount, formatDate, formatName, formatSex, formatSize, getJson, reportError, say, setUpSession, thumbnail,
} from "./common.js";

const params = new URLSearchParams(location.search);
// 25 a page unless the address says otherwise (`limit`, 1 to 200).
const PAGE_SIZE = Math.min(200, Math.max(1, Number.parseInt(params.get("limit") || "25", 10) || 25));
const FIELDS = ["patient_name", "patient_id", "birth_date", "sex", "year", "study_date_from", "study_date_to", "modality"];

const form = document.getElementById("search");
const box = document.getElementById("message");
const status = document.getElementById("status");
const table = document.getElementById("table");
const body = table.querySelector("tbody");
const pages = document.getElementById("pages");

setUpSession();

for (const name of FIELDS) {
  const value = params.get(name);
  if (value !== null) form.elements[name].value = value;
}
sessionStorage.setItem("dicomflow.search", location.search);

// Only filled fields go into the address: "/?patient_name=Иванов", not ten empty ones.
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const query = new URLSearchParams();
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, name === "modality" ? value.toUpperCase() : value);
  }
  if (params.has("limit")) query.set("limit", String(PAGE_SIZE));
  const name = query.get("patient_name");
  if (name && !/[\p{L}\p{N}]/u.test(name)) {
    say(box, "Patient name: type at least one letter or digit.");
    form.elements.patient_name.focus();
    return;
  }
  const from = query.get("study_date_from");
  const to = query.get("study_date_to");
  if (from && to && from > to) {
    say(box, "Study date from: it must not be after “Study date to”.");
    form.elements.study_date_from.focus();
    return;
  }
  location.assign(query.toString() ? `/?${query}` : "/");
});

function studyLink(uid) {
  return `/studies/${encodeURIComponent(uid)}`;
}

function row(study) {
  const href = studyLink(study.study_uid);
  const name = formatName(study.patient.patient_name);
  const thumb = thumbnail(study.thumbnail_url, 64);
  return el(
    "tr",
    {},
    el("td", {}, el("a", { href, tabindex: -1, "aria-hidden": "true" }, thumb)),
    el("td", {}, el("a", { href, class: "patient" }, name), el("div", { class: "sub" }, `ID ${study.patient.patient_id || "—"}`)),
    el("td", {}, formatDate(study.patient.birth_date)),
    el("td", {}, formatSex(study.patient.sex)),
    el("td", { class: "nowrap" }, formatDate(study.study_date)),
    el("td", {}, study.study_description || "—"),
    el("td", {}, study.modalities.join(", ") || "—"),
    el("td", { class: "num" }, formatCount(study.series_count)),
    el("td", { class: "num" }, formatCount(study.instance_count)),
    el("td", { class: "num nowrap" }, formatSize(study.size_bytes)),
  );
}

function pageLink(offset) {
  const query = new URLSearchParams(location.search);
  if (offset > 0) query.set("offset", String(offset));
  else query.delete("offset");
  return query.toString() ? `/?${query}` : "/";
}

async function search() {
  const query = new URLSearchParams();
  for (const name of FIELDS) {
    const value = params.get(name);
    if (value) query.set(name, value);
  }
  const filtered = query.toString() !== "";
  const offset = Math.max(0, Number.parseInt(params.get("offset") || "0", 10) || 0);
  query.set("limit", String(PAGE_SIZE));
  query.set("offset", String(offset));
  status.textContent = "Searching…";
  try {
    const page = await getJson(`/v1/studies?${query}`);
    body.replaceChildren(...page.items.map(row));
    table.hidden = page.items.length === 0;
    // Beyond the server's count limit the total is a lower bound: "1,000+".
    const exact = page.total_exact !== false;
    const total = `${formatCount(page.total)}${exact ? "" : "+"}`;
    if (page.total === 0) {
      status.textContent = filtered ? "No studies match this search." : "There are no studies yet.";
    } else {
      const what = page.total === 1 && exact ? "study" : "studies";
      status.textContent = filtered ? `${total} ${what} found.` : `${total} ${what}, newest first.`;
    }
    const last = Math.min(offset + page.items.length, page.total);
    pages.hidden = exact && page.total <= PAGE_SIZE;
    document.getElementById("range").textContent = page.items.length
      ? `${formatCount(offset + 1)}–${formatCount(last)} of ${total}`
      : "";
    const prev = document.getElementById("prev");
    const next = document.getElementById("next");
    prev.toggleAttribute("hidden", offset === 0);
    prev.href = pageLink(Math.max(0, offset - PAGE_SIZE));
    next.toggleAttribute("hidden", exact && last >= page.total);
    next.href = pageLink(offset + PAGE_SIZE);
  } catch (err) {
    status.textContent = "";
    reportError(box, err);
  }
}

search();
