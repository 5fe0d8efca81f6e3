// Live refresh for the deliveries pages, and nothing else: every few seconds, fetch this same
// page and swap in its fresh [data-live] part (statuses, attempts). It is our own server-rendered,
// escaped HTML. Pauses while the tab is hidden or you are using a control inside that part.
(function () {
  var live = document.querySelector("[data-live]");
  if (!live || !window.fetch) return;
  var every = 1000 * (parseFloat(live.getAttribute("data-live")) || 5);
  function refresh() {
    if (document.hidden || live.contains(document.activeElement)) return;
    fetch(location.href, {credentials: "same-origin", cache: "no-store"})
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        var fresh = html && new DOMParser().parseFromString(html, "text/html").querySelector("[data-live]");
        if (fresh) { live.replaceWith(fresh); live = fresh; }
      })
      .catch(function () {});
  }
  setInterval(refresh, every);
})();
