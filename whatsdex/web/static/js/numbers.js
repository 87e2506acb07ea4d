/*
 * Numbers and client link pages: the QR code's countdown.
 *
 * `data-countdown="<seconds>"` holds the seconds a code had left when the server rendered it;
 * counting from when this page first saw the element keeps the countdown right even when the
 * phone's or computer's clock is off. Everything else on these pages is htmx.
 */
(function () {
  "use strict";

  function tick() {
    var now = Date.now();
    var items = document.querySelectorAll("[data-countdown]");
    for (var i = 0; i < items.length; i++) {
      var el = items[i];
      if (!el.dataset.deadline) {
        var seconds = parseFloat(el.getAttribute("data-countdown"));
        if (isNaN(seconds)) continue;
        el.dataset.deadline = String(now + seconds * 1000);
      }
      var left = Math.round((parseFloat(el.dataset.deadline) - now) / 1000);
      el.textContent = left > 0 ? "in " + left + " s" : "now: a new code is on its way";
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", tick);
  } else {
    tick();
  }
  document.addEventListener("htmx:afterSettle", tick);
  setInterval(tick, 1000);
})();
