// The dashboard's progressive enhancement: preview widths, a live announcement preview and
// live job progress. Every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  // Preview widths: desktop or phone.
  document.querySelectorAll("[data-width]").forEach(function (button) {
    button.addEventListener("click", function () {
      var frame = document.getElementById(button.dataset.frame);
      if (frame) frame.classList.toggle("phone", button.dataset.width !== "100%");
    });
  });

  // Live preview of an announcement: the compose form is posted into the preview frame.
  var compose = document.getElementById("compose");
  if (compose) {
    var timer = null;
    var refresh = function () {
      var preview = document.createElement("form");
      preview.method = "post";
      preview.action = compose.dataset.preview;
      preview.target = "campaign-frame";
      preview.hidden = true;
      new FormData(compose).forEach(function (value, key) {
        var input = document.createElement("textarea");
        input.name = key;
        input.value = value;
        preview.appendChild(input);
      });
      document.body.appendChild(preview);
      preview.submit();
      preview.remove();
    };
    compose.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(refresh, 600);
    });
    if (compose.querySelector("#body").value) refresh();
  }

  // Live progress of a worker job.
  var job = document.getElementById("job");
  if (job) {
    var poll = function () {
      fetch(job.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) { return response.json(); })
        .then(function (data) {
          ["status", "done", "total", "sent", "failed", "rate", "seconds_left", "error"].forEach(function (key) {
            var cell = job.querySelector('[data-field="' + key + '"]');
            var empty = key === "error" ? "" : "–";
            if (cell) cell.textContent = data[key] === null || data[key] === undefined ? empty : data[key];
          });
          var bar = job.querySelector('[data-field="progress"]');
          if (bar) { bar.max = data.total || 1; bar.value = data.done || 0; }
          if (data.status === "queued" || data.status === "running") setTimeout(poll, 1000);
        })
        .catch(function () { setTimeout(poll, 3000); });
    };
    poll();
  }
});
