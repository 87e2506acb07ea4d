/*
 * Template editor: variable buttons insert `{{...}}` at the cursor, and a problem's position
 * button puts the cursor where the problem is. The preview itself is htmx (the textarea posts
 * on input); inserting text fires an `input` event so the preview follows.
 *
 * Positions from the server count Unicode code points; a textarea counts UTF-16 units, so
 * characters outside the Basic Multilingual Plane (most emoji) are converted here.
 */
(function () {
  "use strict";

  function editor(button) {
    var selector = button.getAttribute("data-insert-into") || "#template-body";
    return document.querySelector(selector);
  }

  function insertAtCursor(field, text) {
    var start = field.selectionStart;
    var end = field.selectionEnd;
    if (typeof start !== "number") {
      start = end = field.value.length;
    }
    field.focus();
    field.setRangeText(text, start, end, "end");
    field.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function utf16Index(value, codePoints) {
    var index = 0;
    var seen = 0;
    while (index < value.length && seen < codePoints) {
      var code = value.charCodeAt(index);
      index += code >= 0xd800 && code <= 0xdbff && index + 1 < value.length ? 2 : 1;
      seen += 1;
    }
    return index;
  }

  function showPosition(position) {
    var field = document.querySelector("#template-body");
    if (!field) return;
    var at = utf16Index(field.value, position);
    field.focus();
    field.setSelectionRange(at, Math.min(at + 1, field.value.length));
    // Bring the selected line into view in a tall textarea.
    var before = field.value.slice(0, at).split("\n").length - 1;
    var lineHeight = parseFloat(window.getComputedStyle(field).lineHeight) || 20;
    field.scrollTop = Math.max(0, before * lineHeight - field.clientHeight / 2);
  }

  document.addEventListener("click", function (event) {
    var chip = event.target.closest("[data-insert]");
    if (chip) {
      event.preventDefault();
      var field = editor(chip);
      if (field) insertAtCursor(field, chip.getAttribute("data-insert"));
      return;
    }
    var problem = event.target.closest("[data-position]");
    if (problem) {
      event.preventDefault();
      var position = parseInt(problem.getAttribute("data-position"), 10);
      if (!isNaN(position)) showPosition(position);
    }
  });
})();
