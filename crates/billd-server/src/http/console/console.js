// billd console: the one script. Pages work without it; it only shows each
// <time> in the viewer's time zone, keeping the UTC value on hover.
"use strict";
(function () {
  var pad = function (n) { return (n < 10 ? "0" : "") + n; };
  var offset = function (d) {
    var m = -d.getTimezoneOffset();
    var sign = m < 0 ? "-" : "+";
    m = Math.abs(m);
    return "UTC" + sign + pad(Math.floor(m / 60)) + ":" + pad(m % 60);
  };
  var times = document.querySelectorAll("time[datetime]");
  for (var i = 0; i < times.length; i++) {
    var el = times[i];
    var utc = el.getAttribute("datetime");
    var d = new Date(utc);
    if (isNaN(d.getTime())) { continue; }
    el.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
      " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) +
      " " + offset(d);
    el.setAttribute("title", utc + " (UTC)");
    el.setAttribute("data-local", "1");
  }
})();
