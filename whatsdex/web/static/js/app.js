/*
 * WhatsDeX dashboard behaviour. Loaded with `defer` after htmx.
 *
 * The Content-Security-Policy forbids inline scripts and handlers, so every behaviour is wired
 * here by event delegation on `document`: it also covers markup that htmx swaps in later.
 */
(function () {
  "use strict";

  var TOAST_TIMEOUT_MS = { error: 8000, default: 5000 };
  var TOAST_LEAVE_MS = 200;

  function csrfToken() {
    // Read on every request: a swapped page fragment or a new login may replace the meta tag.
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : null;
  }

  function toastContainer() {
    var box = document.getElementById("toasts");
    if (!box) {
      box = document.createElement("div");
      box.id = "toasts";
      box.className = "toasts";
      box.setAttribute("aria-live", "polite");
      document.body.appendChild(box);
    }
    return box;
  }

  function toastLevel(toast) {
    if (toast.classList.contains("toast-error")) return "error";
    if (toast.classList.contains("toast-success")) return "success";
    return "info";
  }

  function dismissToast(toast) {
    if (toast.dataset.leaving) return;
    toast.dataset.leaving = "1";
    toast.classList.add("toast-leaving");
    setTimeout(function () {
      toast.remove();
    }, TOAST_LEAVE_MS);
  }

  function scheduleDismiss(toast) {
    if (toast.dataset.scheduled) return;
    toast.dataset.scheduled = "1";
    var level = toastLevel(toast);
    var delay = TOAST_TIMEOUT_MS[level] || TOAST_TIMEOUT_MS.default;
    setTimeout(function () {
      dismissToast(toast);
    }, delay);
  }

  function addCloseButton(toast) {
    if (toast.querySelector(".toast-close")) return;
    var close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "\u00d7";
    toast.appendChild(close);
  }

  function adoptToasts(root) {
    var toasts = root.querySelectorAll(".toast");
    for (var i = 0; i < toasts.length; i++) {
      addCloseButton(toasts[i]);
      scheduleDismiss(toasts[i]);
    }
  }

  /** Show a message in the corner; text only, never HTML. */
  function showToast(message, level) {
    var toast = document.createElement("div");
    toast.className = "toast toast-" + (level || "info");
    toast.setAttribute("role", level === "error" ? "alert" : "status");
    var text = document.createElement("span");
    text.textContent = message;
    toast.appendChild(text);
    toastContainer().appendChild(toast);
    // The MutationObserver adopts it (close button, timer).
    return toast;
  }

  function watchToasts() {
    var box = toastContainer();
    adoptToasts(box);
    new MutationObserver(function () {
      adoptToasts(box);
    }).observe(box, { childList: true });
  }

  // --- htmx integration -------------------------------------------------------------------

  document.addEventListener("htmx:configRequest", function (event) {
    var token = csrfToken();
    if (token) event.detail.headers["X-CSRFToken"] = token;
  });

  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    // The server answers failed HTMX requests with a toast and HX-Retarget: swap it in.
    if (xhr.status >= 400 && xhr.getResponseHeader("HX-Retarget")) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  document.addEventListener("htmx:responseError", function (event) {
    // A failure without a toast from the server (e.g. a proxy error page): say something.
    var xhr = event.detail.xhr;
    showToast("Request failed (" + xhr.status + " " + (xhr.statusText || "error") + ")", "error");
  });

  document.addEventListener("htmx:sendError", function () {
    showToast("Could not reach the server. Check your connection and try again.", "error");
  });

  document.addEventListener("htmx:timeout", function () {
    showToast("The server took too long to answer. Try again.", "error");
  });

  // --- Clicks: toast close buttons and copy-to-clipboard ----------------------------------

  function copyTarget(button) {
    var selector = button.getAttribute("data-copy");
    return selector ? document.querySelector(selector) : null;
  }

  function textOf(element) {
    if ("value" in element && typeof element.value === "string") return element.value;
    return element.textContent.trim();
  }

  // Plain-HTTP deployments are not a secure context, so navigator.clipboard is missing there:
  // fall back to selecting the text and the legacy copy command.
  function legacyCopy(element) {
    var selection = window.getSelection();
    if (typeof element.select === "function") {
      element.select();
    } else {
      var range = document.createRange();
      range.selectNodeContents(element);
      selection.removeAllRanges();
      selection.addRange(range);
    }
    var ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (err) {
      ok = false;
    }
    return ok;
  }

  function copied(button, ok) {
    var label = button.dataset.copyLabel || button.textContent;
    button.dataset.copyLabel = label;
    button.textContent = ok ? "Copied" : "Select and copy manually";
    button.classList.toggle("is-copied", ok);
    showToast(ok ? "Copied to the clipboard." : "Copy failed: select the text and copy it.",
      ok ? "success" : "error");
    setTimeout(function () {
      button.textContent = button.dataset.copyLabel;
      button.classList.remove("is-copied");
    }, 2000);
  }

  function copy(button) {
    var target = copyTarget(button);
    if (!target) return;
    var text = textOf(target);
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { copied(button, true); },
        function () { copied(button, legacyCopy(target)); }
      );
    } else {
      copied(button, legacyCopy(target));
    }
  }

  document.addEventListener("click", function (event) {
    var close = event.target.closest(".toast-close");
    if (close) {
      dismissToast(close.closest(".toast"));
      return;
    }
    var copyButton = event.target.closest("[data-copy]");
    if (copyButton) {
      event.preventDefault();
      copy(copyButton);
    }
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watchToasts);
  } else {
    watchToasts();
  }

  window.whatsdex = { toast: showToast };
})();
