// Queue and worklist: J/K move the selection, Enter opens it; the queue refreshes itself every 30 s.
(function () {
  var live = document.getElementById('queue-live');
  var selected = -1;

  function rows() { return Array.prototype.slice.call(document.querySelectorAll('tbody tr[data-study]')); }

  function select(index) {
    var all = rows();
    if (!all.length) return;
    selected = Math.max(0, Math.min(all.length - 1, index));
    all.forEach(function (row, i) { row.classList.toggle('selected', i === selected); });
    var link = all[selected].querySelector('a');
    if (link) link.focus();
  }

  document.addEventListener('keydown', function (e) {
    var name = window.Shortcuts && window.Shortcuts.action(e);
    if (name === 'next') { e.preventDefault(); select(selected + 1); }
    else if (name === 'previous') { e.preventDefault(); select(selected - 1); }
  });

  if (!live || !live.dataset.refresh) return;
  setInterval(function () {
    if (document.hidden) return;
    fetch(location.href, {credentials: 'same-origin'})
      .then(function (r) { if (r.status === 401 || r.redirected) { location.reload(); return null; } return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, 'text/html').getElementById('queue-live');
        if (!fresh) return;
        var keep = selected;
        live.innerHTML = fresh.innerHTML;
        if (window.localTimes) window.localTimes(live);
        if (keep >= 0) select(keep);
      });
  }, +live.dataset.refresh * 1000);
})();
