// Live "next fire times" on the schedule change form (no inline JS: CSP-safe).
// Reads the timing fields as they are typed, asks the admin's preview view for the
// next fire times, and shows them in #jobs-schedule-upcoming.
"use strict";
(function () {
  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }

  ready(function () {
    var box = document.getElementById("jobs-schedule-upcoming");
    if (!box || !box.dataset.url) return;
    // start_at and end_at are the admin's split widgets: a date (_0) and a time (_1).
    var names = ["cron", "every", "every_unit", "timezone",
                 "start_at_0", "start_at_1", "end_at_0", "end_at_1"];
    var fields = names.map(function (name) {
      return document.getElementById("id_" + name);
    }).filter(Boolean);
    if (!fields.length) return;  // a schedule from settings: nothing is editable
    var explain = box.querySelector(".jobs-explain");
    var error = box.querySelector(".jobs-error");
    var list = box.querySelector("ol");
    var timer = null;
    var latest = 0;

    function value(name) {
      var el = document.getElementById("id_" + name);
      return el ? el.value.trim() : "";
    }

    function show(data) {
      explain.textContent = data.explain || "";
      error.textContent = data.error || "";
      error.hidden = !data.error;
      list.replaceChildren();
      (data.times || []).forEach(function (text) {
        var li = document.createElement("li");
        li.textContent = text;
        list.appendChild(li);
      });
    }

    function refresh() {
      var params = new URLSearchParams({
        cron: value("cron"),
        every: value("every"),
        unit: value("every_unit"),
        timezone: value("timezone"),
        start_at_0: value("start_at_0"),
        start_at_1: value("start_at_1"),
        end_at_0: value("end_at_0"),
        end_at_1: value("end_at_1"),
      });
      var request = ++latest;
      fetch(box.dataset.url + "?" + params.toString(), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then(function (response) { return response.json(); })
        .then(function (data) { if (request === latest) show(data); })
        .catch(function () { /* keep what is shown; the form still validates on save */ });
    }

    fields.forEach(function (el) {
      ["input", "change"].forEach(function (kind) {
        el.addEventListener(kind, function () {
          clearTimeout(timer);
          timer = setTimeout(refresh, 300);
        });
      });
    });
  });
})();
