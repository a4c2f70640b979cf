// The Airflow UI shows this page in a sandboxed iframe that may not navigate the
// top window; links to Airflow pages would open a second Airflow UI inside the
// frame.  Same-origin frames may use the top window's history, which the UI's
// router follows.  Without JavaScript (or outside a frame) links work as usual.
(function () {
  if (window.top === window) return;
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[data-airflow-ui]");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    try {
      var top = window.top, url = new URL(link.href);
      if (url.origin !== top.location.origin) return;
      var idx = ((top.history.state && top.history.state.idx) || 0) + 1;
      top.history.pushState({usr: null, key: Math.random().toString(36).slice(2, 10), idx: idx}, "",
                            url.pathname + url.search + url.hash);
      top.dispatchEvent(new PopStateEvent("popstate", {state: top.history.state}));
      event.preventDefault();
    } catch (error) { /* a cross-origin parent: let the frame follow the link */ }
  });
})();
