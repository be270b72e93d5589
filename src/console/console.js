// Keeps a console page current: one server-sent-events stream per tab (its address is the
// page's data-live), and on each note the page's content is fetched again and swapped in.
(function () {
  "use strict";
  // Countdowns (a reservation's or a lease's time left) tick down from when the page was drawn,
  // so the browser's own clock does not matter.
  let drawn = performance.now();
  function span(ms) {
    const s = Math.ceil(Math.max(ms, 0) / 1000);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor(s / 60) % 60 + " min";
    return Math.floor(s / 86400) + " d " + Math.floor(s / 3600) % 24 + " h";
  }
  setInterval(function () {
    const gone = performance.now() - drawn;
    for (const c of document.querySelectorAll(".countdown[data-left-ms]")) {
      c.textContent = span(Number(c.dataset.leftMs) - gone);
    }
  }, 1000);
  const live = document.body.dataset.live;
  if (!live || !window.EventSource) return;
  // The log index the last note named: the page asked for must show at least that much, and
  // the replica may send the tabs asking for the same page one drawing of it.
  let busy = false, again = false, seen = "";
  // A field being filled in (the events page's filters) is not swapped out from under the
  // person typing: the refresh waits until they leave it.
  function editing() {
    const a = document.activeElement;
    return a && a.closest("main") && a.matches("input, select, textarea");
  }
  document.addEventListener("focusout", function () {
    if (again && !busy) { again = false; setTimeout(refresh, 0); }
  });
  async function refresh(e) {
    // A new leader or a resync names no index: that page is drawn anew.
    if (e) seen = e.type === "changed" && e.data !== "leadership" ? e.lastEventId : "";
    if (busy || editing()) { again = true; return; }
    busy = true;
    try {
      const headers = seen ? { "X-Berth-Seen": seen } : {};
      const r = await fetch(location.href, { credentials: "same-origin", cache: "no-store", headers });
      if (r.redirected || !r.ok) { location.assign(r.redirected ? r.url : location.href); return; }
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      // Keyboard focus stays where it was across a refresh: on the same field, or on the same
      // form's button (a Cancel stays focused while its row stays).
      const a = document.activeElement, form = a && a.form && a.form.getAttribute("action");
      const href = a && a.matches("a[href]") && a.getAttribute("href");
      const focused = a && a.id ? "#" + CSS.escape(a.id)
        : form ? 'form[action="' + CSS.escape(form) + '"] button'
        : href ? 'main a[href="' + CSS.escape(href) + '"]' : null;
      for (const part of ["main", "footer"]) {
        const fresh = doc.querySelector(part), old = document.querySelector(part);
        if (fresh && old) old.replaceWith(fresh);
      }
      drawn = performance.now();
      const back = focused && document.querySelector(focused);
      if (back && back !== document.activeElement) back.focus();
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }
  const events = new EventSource(live);
  events.addEventListener("changed", refresh);
  events.addEventListener("resync", refresh);
  events.addEventListener("signed-out", function () {
    events.close();
    location.assign("/sign-in");
  });
})();
