// Sign-in: the access key is sent once to POST /v1/session, which answers with an HttpOnly
// cookie; the key is never kept by the page. Then back to where the person was going.
import { errorFor, say } from "./common.js";

const REASONS = {
  expired: "Your session has ended. Sign in again to continue where you were.",
  "signed-out": "You have signed out.",
};

const form = document.getElementById("signin");
const key = document.getElementById("key");
const box = document.getElementById("message");
const next = document.body.dataset.next || "/";
const reason = new URLSearchParams(location.search).get("reason");
if (REASONS[reason]) {
  say(box, REASONS[reason]);
  box.classList.add("info");
}
key.focus();

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  box.classList.remove("info");
  const value = key.value.trim();
  if (!value) {
    say(box, "Enter your access key.");
    key.focus();
    return;
  }
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const response = await fetch("/v1/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ key: value }),
    });
    if (response.ok) {
      await response.json(); // read to the end, so leaving the page cancels nothing
      key.value = "";
      location.replace(next);
      return;
    }
    if (response.status === 401) {
      say(box, "This access key is not valid or has been withdrawn. Check it and try again.");
    } else {
      say(box, (await errorFor(response)).message);
    }
  } catch {
    say(box, "Cannot reach the dicomflow server. Check the network connection and try again.");
  } finally {
    button.disabled = false;
  }
  key.select();
});
