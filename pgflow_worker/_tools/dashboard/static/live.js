// Follows a started run: the server pushes the run's freshly rendered body (Server-Sent
// Events, fed by LISTEN/NOTIFY) whenever it changes; nothing here polls or reloads the page.
"use strict";
(function () {
  const root = document.getElementById("run");
  if (!root || !root.dataset.events) return;
  const source = new EventSource(root.dataset.events);
  source.addEventListener("update", function (event) {
    const data = JSON.parse(event.data);
    root.dataset.status = data.status;
    if (data.version === root.dataset.version) return;  // nothing changed since it was drawn
    root.dataset.version = data.version;
    const open = Array.from(root.querySelectorAll("details[open]"), function (d) { return d.id; });
    const focused = document.activeElement && document.activeElement.name === "reason"
      ? document.activeElement.value : null;
    root.innerHTML = data.html;  // rendered and escaped by the server's templates
    open.forEach(function (id) {
      const details = id && document.getElementById(id);
      if (details) details.open = true;
    });
    const reason = root.querySelector("input[name=reason]");
    if (reason && focused !== null) { reason.value = focused; reason.focus(); }
  });
  source.addEventListener("end", function () {
    source.close();
    root.dataset.live = "ended";
  });
  source.addEventListener("error", function () {
    const state = document.getElementById("live-state");
    if (state && source.readyState !== EventSource.CLOSED) {
      state.textContent = "Reconnecting to the live updates…";
    }
  });
})();
