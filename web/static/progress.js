// Live progress: poll the batch API every 2 s for each unfinished batch on the page.
(function () {
  function poll(el) {
    var id = el.dataset.batch;
    fetch('/api/v1/batches/' + id, {credentials: 'same-origin', headers: {'Accept': 'application/json'}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (b) {
        if (!b) return;
        el.querySelector('.fill').style.width = b.percent + '%';
        el.querySelector('.pct').textContent = b.percent + '%';
        el.querySelector('.status').textContent = b.status;
        var failed = el.querySelector('.failed'); if (failed) failed.textContent = b.failed;
        var done = el.querySelector('.done'); if (done) done.textContent = b.done;
        if (el.dataset.detail && b.status !== el.dataset.status) { location.reload(); return; }
        if (b.status !== 'done') setTimeout(function () { poll(el); }, 2000);
        else if (el.dataset.detail && el.dataset.status !== 'done') location.reload();
      });
  }
  document.querySelectorAll('[data-batch]').forEach(function (el) {
    if (el.dataset.status !== 'done') setTimeout(function () { poll(el); }, 1000);
  });
})();
