// The batches list: poll each unfinished batch every 2 s (GET /api/v1/batches/<id>) and update its row.
(function () {
  function poll(row) {
    PS.getJSON('/api/v1/batches/' + row.dataset.batch).then(function (b) {
      if (b) {
        row.querySelector('.fill').style.width = b.percent + '%';
        row.querySelector('.bar').setAttribute('aria-valuenow', b.percent);
        row.querySelector('.pct').textContent = b.percent + '%';
        row.querySelector('.status').textContent = b.status;
        row.querySelector('.failed').textContent = b.failed;
      }
      if (!b || b.status !== 'done') { PS.checkWorkers(); setTimeout(function () { poll(row); }, 2000); }
    });
  }
  document.querySelectorAll('tr[data-batch]').forEach(function (row) {
    if (row.dataset.status !== 'done') setTimeout(function () { poll(row); }, 1000);
  });
})();
