// Shared by every page: calls to the API with the session cookie, what to do when the
// session ends, human messages for errors, and how values are shown (sizes, dates, names).

export class SignedOut extends Error {}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

const FIELD_LABELS = {
  patient_name: "Patient name",
  patient_id: "Patient ID",
  birth_date: "Date of birth",
  sex: "Sex",
  year: "Study year",
  study_date_from: "Study date from",
  study_date_to: "Study date to",
  modality: "Modality",
  wc: "Window centre",
  ww: "Window width",
  key: "Access key",
};

/** Back to the sign-in page, coming back here (search and all) afterwards. */
export function toSignIn(reason) {
  const next = location.pathname + location.search;
  const extra = reason ? `&reason=${encodeURIComponent(reason)}` : "";
  location.assign(`/signin?next=${encodeURIComponent(next)}${extra}`);
}

function validationMessage(detail) {
  if (!Array.isArray(detail)) return "Some of the values given are not valid.";
  return detail
    .map((d) => {
      const field = Array.isArray(d.loc) ? d.loc[d.loc.length - 1] : "";
      const label = FIELD_LABELS[field];
      let text = String(d.msg || "is not valid").replace(/^Value error, /, "");
      for (const [name, words] of Object.entries(FIELD_LABELS)) text = text.replaceAll(name, `“${words}”`);
      return label ? `${label}: ${text}` : text;
    })
    .join(" · ");
}

/** What went wrong, in words for a person; never a stack trace. */
export async function errorFor(response) {
  let detail;
  try {
    detail = (await response.json()).detail;
  } catch {
    detail = undefined;
  }
  switch (response.status) {
    case 400:
    case 422:
      return new ApiError(validationMessage(detail), response.status);
    case 403:
      return new ApiError("Your access key does not allow this. Ask your administrator.", 403);
    case 404:
      return new ApiError("Not found: it may have been removed, or the link is wrong.", 404);
    case 416:
      return new ApiError("The download could not be resumed; start it again.", 416);
    case 502:
    case 503:
    case 504:
      return new ApiError("The server is busy or restarting. Try again in a minute.", response.status);
    default:
      return new ApiError(`The server could not do this (error ${response.status}). Try again; if it keeps happening, tell your administrator.`, response.status);
  }
}

/** fetch() with the session cookie; a 401 ends here by going to the sign-in page. */
export async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the dicomflow server. Check the network connection and try again.", 0);
  }
  if (response.status === 401) {
    await response.text().catch(() => ""); // read to the end: leaving the page cancels nothing
    toSignIn("expired");
    throw new SignedOut("signed out");
  }
  if (!response.ok) throw await errorFor(response);
  return response;
}

export async function getJson(path) {
  return (await call(path, { headers: { Accept: "application/json" } })).json();
}

/** Shows a message (or hides it with an empty text) in a role="alert" box. */
export function say(box, text) {
  box.textContent = text || "";
  box.hidden = !text;
}

export function reportError(box, err) {
  if (err instanceof SignedOut) return;
  say(box, err instanceof ApiError ? err.message : "Something went wrong on this page. Reload it and try again.");
}

/** An element with attributes and children (text is always set as text, never as HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A thumbnail; one that cannot be shown (no pixels, a damaged file) becomes a grey "no image". */
export function thumbnail(src, size, className = "thumb") {
  if (!src) return el("span", { class: `${className} none`, "aria-hidden": "true" }, "no image");
  const img = el("img", { src, alt: "", width: size, height: size, loading: "lazy", class: className });
  img.addEventListener("error", () => img.replaceWith(thumbnail(null, size, className)), { once: true });
  return img;
}

const UNITS = ["bytes", "kB", "MB", "GB", "TB"];

/** 1234567 -> "1.2 MB" (powers of 1000, as disks and network speeds are counted). */
export function formatSize(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "—";
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  if (unit === 0) return `${value} ${value === 1 ? "byte" : "bytes"}`;
  return `${value.toFixed(value < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

export function formatCount(n) {
  return Number.isFinite(n) ? n.toLocaleString() : "—";
}

const DATE_FORMAT = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" });

/** "2024-01-15" -> "15 Jan 2024" in the browser's language (month in words: never ambiguous). */
export function formatDate(iso) {
  if (!iso) return "—";
  const date = new Date(`${iso}T00:00:00Z`);
  return Number.isNaN(date.getTime()) ? iso : DATE_FORMAT.format(date);
}

/** "101500" or "10:15:00.123" -> "10:15". */
export function formatTime(value) {
  const digits = String(value || "").replace(/:/g, "");
  return /^\d{4}/.test(digits) ? `${digits.slice(0, 2)}:${digits.slice(2, 4)}` : "";
}

const SEX = { M: "Male", F: "Female", O: "Other" };

export function formatSex(code) {
  return SEX[code] || "—";
}

/** DICOM person name to display: "Иванов^Иван^Сергеевич" -> "Иванов Иван Сергеевич";
 *  "Wang^XiaoMing=王^小明" -> "Wang XiaoMing (王 小明)". */
export function formatName(pn) {
  const groups = String(pn || "")
    .split("=")
    .map((g) => g.split("^").map((part) => part.trim()).filter(Boolean).join(" "))
    .filter(Boolean);
  if (groups.length === 0) return "(no name)";
  return groups.length === 1 ? groups[0] : `${groups[0]} (${groups.slice(1).join("; ")})`;
}

/** Sign-out button, and going to sign-in when the session's time is up. */
export function setUpSession() {
  const button = document.getElementById("sign-out");
  button?.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await fetch("/v1/session", { method: "DELETE", credentials: "same-origin" });
    } finally {
      location.assign("/signin?reason=signed-out");
    }
  });
  const expires = Date.parse(document.body.dataset.expires || "");
  if (Number.isFinite(expires)) {
    const wait = Math.max(0, expires - Date.now()) + 1000;
    if (wait < 2 ** 31 - 1) setTimeout(() => toSignIn("expired"), wait);
  }
}
