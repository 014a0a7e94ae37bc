// Times are sent in UTC (<time datetime="...">): shown in the reader's own zone, with the zone named.
(function () {
  var format = new Intl.DateTimeFormat(undefined, {year: 'numeric', month: '2-digit', day: '2-digit',
                                                   hour: '2-digit', minute: '2-digit', timeZoneName: 'short'});
  window.localTimes = function (root) {
    (root || document).querySelectorAll('time[datetime]').forEach(function (el) {
      var moment = new Date(el.getAttribute('datetime'));
      if (!isNaN(moment)) { el.title = el.textContent; el.textContent = format.format(moment); }
    });
  };
  window.localTimes();
})();
