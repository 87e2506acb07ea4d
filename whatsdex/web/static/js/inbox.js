/*
 * The inbox page. htmx does the requests and the live swaps (`/inbox/events`); this file keeps
 * what arrives consistent:
 *  - a list marked `data-dedupe` keeps the first element of each id: a chat row sent to the top
 *    of the list replaces its older copy, and a message the page already shows (a reply that
 *    arrived by its own answer and again by the stream) is not shown twice;
 *  - a chat list filtered to one number drops rows of other numbers the stream sends;
 *  - the fallback polls (`data-fallback`) run only while the stream is down;
 *  - the open chat is highlighted, the conversation follows its newest message, and Enter sends.
 */
(function () {
  "use strict";

  var inbox = function () { return document.getElementById("inbox"); };

  function dedupe(list) {
    var seen = {};
    var children = Array.prototype.slice.call(list.children);
    var filter = list.getAttribute("data-session");
    var rows = 0;
    children.forEach(function (child) {
      if (!child.id || child.classList.contains("inbox-empty")) return;
      if (seen[child.id] || (filter && child.dataset.session && child.dataset.session !== filter)) {
        child.remove();
        return;
      }
      seen[child.id] = true;
      if (child.id.indexOf("chat-") === 0 || child.id.indexOf("msg-") === 0) rows++;
    });
    if (rows > 0) {
      list.querySelectorAll(":scope > .inbox-empty").forEach(function (el) { el.remove(); });
    }
  }

  function markOpenChat() {
    var body = document.getElementById("conversation-body");
    var open = body ? body.getAttribute("data-chat") : null;
    document.querySelectorAll(".inbox-chat > a").forEach(function (link) {
      var current = open && link.parentElement.id === "chat-" + open;
      if (current) link.setAttribute("aria-current", "true");
      else link.removeAttribute("aria-current");
    });
  }

  function nearBottom(box) {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  }

  function toBottom(box) {
    box.scrollTop = box.scrollHeight;
  }

  // Remember whether the reader was at the newest message before new ones arrive.
  function remember(target) {
    if (target && target.id === "messages") target.dataset.follow = nearBottom(target) ? "1" : "";
  }
  document.addEventListener("htmx:beforeSwap", function (event) { remember(event.detail.target); });
  document.addEventListener("htmx:sseBeforeMessage", function (event) { remember(event.target); });

  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.target;
    if (target && target.matches && target.matches("[data-dedupe]")) dedupe(target);
    if (target && target.id === "messages" && target.dataset.follow) toBottom(target);
    if (target && target.id === "conversation") {
      var messages = document.getElementById("messages");
      if (messages) toBottom(messages);
    }
    markOpenChat();
  });

  document.addEventListener("htmx:oobAfterSwap", markOpenChat);

  // The stream's state decides whether the fallback polls run.
  document.addEventListener("htmx:sseOpen", function (event) {
    if (event.target === inbox()) event.target.dataset.live = "1";
  });
  document.addEventListener("htmx:sseError", function (event) {
    if (event.target === inbox()) delete event.target.dataset.live;
  });
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt || !elt.hasAttribute("data-fallback")) return;
    var root = inbox();
    var trigger = event.detail.requestConfig && event.detail.requestConfig.triggeringEvent;
    // A (re)opened stream catches up once; while it is open, the timer polls are not needed.
    if (root && root.dataset.live && !(trigger && trigger.type === "htmx:sseOpen")) {
      event.preventDefault();
    }
  });

  document.addEventListener("click", function (event) {
    var link = event.target.closest(".inbox-chat > a");
    if (!link) return;
    document.querySelectorAll(".inbox-chat > a[aria-current]").forEach(function (el) {
      el.removeAttribute("aria-current");
    });
    link.setAttribute("aria-current", "true");
  });

  // Enter sends, Shift+Enter is a new line (not while an input method is composing).
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    var field = event.target;
    if (!field || field.id !== "reply-text") return;
    event.preventDefault();
    var form = field.form;
    if (form && (field.value.trim() || (form.file && form.file.files.length))) {
      form.requestSubmit();
    }
  });

  function start() {
    var messages = document.getElementById("messages");
    if (messages) toBottom(messages);
    markOpenChat();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
