/*
 * Starts Swagger UI on /api/docs. Lives in a file because the CSP forbids inline scripts.
 * The spec URL comes from the page (data-spec-url) so the server decides where it lives.
 */
(function () {
  "use strict";

  function start() {
    var root = document.getElementById("swagger-ui");
    if (!root || typeof window.SwaggerUIBundle !== "function") return;
    window.ui = window.SwaggerUIBundle({
      url: root.getAttribute("data-spec-url"),
      domNode: root,
      deepLinking: true,
      presets: [window.SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      // The default validator badge loads an image from validator.swagger.io (blocked by CSP).
      validatorUrl: null,
      tryItOutEnabled: false,
      persistAuthorization: false,
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
