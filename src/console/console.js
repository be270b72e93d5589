// Keeps a console page current: one server-sent-events stream per tab (its address is the
// page's data-live), and on each note the page's content is fetched again and swapped in.
(function () {
  "use strict";
  const live = document.body.dataset.live;
  if (!live || !window.EventSource) return;
  let busy = false, again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      if (r.redirected || !r.ok) { location.assign(r.redirected ? r.url : location.href); return; }
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const part of ["main", "footer"]) {
        const fresh = doc.querySelector(part), old = document.querySelector(part);
        if (fresh && old) old.replaceWith(fresh);
      }
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
