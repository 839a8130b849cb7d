// sand-boxer dashboard: lease countdowns, copy buttons, confirmations and live updates
// (server-sent events). Written by hand, no dependencies; every page works without it.
"use strict";

(function () {
  function remaining(iso) {
    const end = Date.parse(iso);
    if (Number.isNaN(end)) return "—";
    let left = Math.floor((end - Date.now()) / 1000);
    if (left <= 0) return "expired";
    const pad = (n) => String(n).padStart(2, "0");
    const days = Math.floor(left / 86400); left %= 86400;
    const hours = Math.floor(left / 3600); left %= 3600;
    const minutes = Math.floor(left / 60);
    const seconds = left % 60;
    if (days) return days + "d " + pad(hours) + "h";
    if (hours) return hours + "h " + pad(minutes) + "m";
    return minutes + "m " + pad(seconds) + "s";
  }

  function tick() {
    document.querySelectorAll("[data-expires]").forEach((el) => {
      el.textContent = remaining(el.dataset.expires);
    });
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    const area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function wire(root) {
    root.querySelectorAll("button[data-copy]").forEach((button) => {
      button.hidden = false;
      button.addEventListener("click", () => {
        const source = document.getElementById(button.dataset.copy);
        copyText(source ? source.textContent : "").then(
          () => { button.textContent = "Copied"; },
          () => { button.textContent = "Copy failed: select the text"; });
        setTimeout(() => { button.textContent = "Copy"; }, 2000);
      });
    });
    root.querySelectorAll("form[data-confirm]").forEach((form) => {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  // Live updates: on each event the page is fetched again and its [data-live] parts
  // replaced, so what is shown is always what the server renders for this session.
  let pending = null;
  function refresh() {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try {
        const response = await fetch(window.location.href, {
          credentials: "same-origin", headers: { Accept: "text/html" } });
        if (response.redirected && new URL(response.url).pathname === "/sign-in") {
          window.location.assign(response.url);
          return;
        }
        if (!response.ok) return;
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        document.querySelectorAll("[data-live][id]").forEach((part) => {
          const next = fresh.getElementById(part.id);
          const typing = document.activeElement && document.activeElement.tagName === "INPUT"
            && part.contains(document.activeElement);
          if (next && !typing) {  // never take a field from under the cursor
            part.replaceWith(next);
            wire(next);
          }
        });
        tick();
        document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
      } catch (e) {
        // the next event tries again
      }
    }, 150);
  }

  function stream() {
    const url = document.body.dataset.stream;
    const badge = document.getElementById("live");
    if (!url || !window.EventSource) return;
    if (badge) badge.hidden = false;
    const source = new EventSource(url);
    source.addEventListener("open", () => {
      if (badge) { badge.textContent = "● live"; badge.classList.add("on"); }
    });
    source.addEventListener("error", () => {
      if (badge) { badge.textContent = "○ reconnecting"; badge.classList.remove("on"); }
    });
    source.addEventListener("sandbox", refresh);
    source.addEventListener("signed-out", () => {
      source.close();
      window.location.assign("/sign-in");
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire(document);
    tick();
    setInterval(tick, 1000);
    stream();
  });
})();
