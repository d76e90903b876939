// dirt's pages work without this file; it shows times in local time and keeps pages live.
(function () {
  "use strict";

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function localTime(epoch) {
    var d = new Date(epoch * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function formatTimes(root) {
    var times = root.querySelectorAll("time[data-epoch]");
    for (var i = 0; i < times.length; i++) {
      var epoch = parseFloat(times[i].getAttribute("data-epoch"));
      if (!isNaN(epoch)) {
        times[i].textContent = localTime(epoch);
        times[i].title = times[i].getAttribute("datetime") + " (UTC)";
      }
    }
  }

  function relevant(live, changes) {
    var watch = live.getAttribute("data-watch");
    for (var i = 0; i < changes.length; i++) {
      var c = changes[i];
      if (watch === "records" && (c.type === "record" || c.type === "task")) return true;
      if (watch === "record") {
        var id = live.getAttribute("data-record");
        if ((c.type === "record" && c.id === id) || (c.type === "task" && c.record_id === id)) {
          return true;
        }
      }
      if (watch === "task" && c.type === "task" && c.name === live.getAttribute("data-name")) {
        return true;
      }
      if (watch === "nodes" && (c.type === "node" || c.type === "task")) return true;
    }
    return false;
  }

  // A task's output, shown below the record's tasks as it arrives (the live part above is
  // swapped on every change; this view is outside it, so it keeps its place and its stream).
  function outputView() {
    var view = document.getElementById("output-view");
    if (!view || !window.EventSource) return;
    var pre = view.querySelector("pre.output");
    var state = view.querySelector(".output-state");
    var source = null;

    function close() {
      if (source) { source.close(); source = null; }
    }

    function append(text) {
      var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.appendChild(document.createTextNode(text));
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }

    function parse(event) {
      try { return JSON.parse(event.data); } catch (e) { return null; }
    }

    function open(taskId, name) {
      close();
      pre.textContent = "";
      view.hidden = false;
      view.setAttribute("data-task", taskId);
      view.querySelector(".output-name").textContent = name;
      view.querySelector(".output-task").textContent = taskId;
      state.textContent = "live";
      state.className = "output-state live";
      source = new EventSource("/api/tasks/" + encodeURIComponent(taskId) + "/output/events");
      source.addEventListener("output", function (event) {
        var data = parse(event);
        if (data) append(data.text);
      });
      source.addEventListener("attempt", function (event) {
        var data = parse(event);
        if (data && pre.textContent) append("\n--- attempt " + data.attempt + " ---\n");
      });
      source.addEventListener("end", function (event) {
        var data = parse(event);
        state.textContent = data ? data.state : "";
        state.className = "output-state";
        close();
      });
    }

    document.addEventListener("click", function (event) {
      var link = event.target.closest ? event.target.closest("a.output-link") : null;
      if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
      event.preventDefault();
      open(link.getAttribute("data-task"), link.getAttribute("data-name"));
      view.scrollIntoView({ block: "nearest" });
    });
    view.querySelector(".output-close").addEventListener("click", function () {
      close();
      view.hidden = true;
    });
    window.addEventListener("pagehide", close);
  }

  function start() {
    formatTimes(document);
    outputView();
    var live = document.getElementById("live");
    var status = document.getElementById("live-status");
    if (!live || !window.EventSource || !window.fetch) return;

    var busy = false, again = false, timer = null, lastRun = 0;

    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      lastRun = Date.now();
      var open = {};
      var kept = live.querySelectorAll("details[data-keep]");
      for (var i = 0; i < kept.length; i++) {
        if (kept[i].open) open[kept[i].getAttribute("data-keep")] = true;
      }
      fetch(window.location.href, {
        headers: { "X-Dirt-Fragment": "1" }, credentials: "same-origin", cache: "no-store"
      }).then(function (response) {
        return response.ok ? response.text() : null;
      }).then(function (html) {
        if (html !== null) {
          live.innerHTML = html;
          var details = live.querySelectorAll("details[data-keep]");
          for (var j = 0; j < details.length; j++) {
            if (open[details[j].getAttribute("data-keep")]) details[j].open = true;
          }
          formatTimes(live);
          live.setAttribute("data-refreshed", String(Date.now()));
        }
      }).catch(function () { /* the next change retries */ }).then(function () {
        busy = false;
        if (again) { again = false; schedule(); }
      });
    }

    function schedule() {
      // At most about four refreshes a second, and never later than 250 ms after a change.
      if (timer !== null) return;
      var wait = Math.max(0, 250 - (Date.now() - lastRun));
      timer = window.setTimeout(function () { timer = null; refresh(); }, wait);
    }

    // What depends on time and on other records (why a task waits, the queue) is read again
    // every few seconds while the page shows it, even when nothing of this page changed.
    var every = parseFloat(live.getAttribute("data-refresh") || "0");
    if (every > 0) {
      window.setInterval(function () {
        if (!document.hidden && live.querySelector("[data-ticking]")) schedule();
      }, every * 1000);
    }

    var source = new EventSource("/events?since=" + encodeURIComponent(live.getAttribute("data-seq") || ""));
    source.addEventListener("open", function () { if (status) status.className = "live-status on"; });
    source.addEventListener("error", function () { if (status) status.className = "live-status"; });
    source.addEventListener("change", function (event) {
      var data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      if (data.truncated || relevant(live, data.changes || [])) schedule();
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
