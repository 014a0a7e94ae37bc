// The batch page: poll the batch JSON (GET /api/v1/batches/<id>) and update counts and rows in place,
// so filters, open details and the scroll position stay; filters apply at once without a reload.
(function () {
  var summary = document.getElementById('summary');
  if (!summary) return;
  var id = summary.getAttribute('data-batch'), reader = !!summary.getAttribute('data-reader');
  var filters = document.getElementById('filters'), table = document.getElementById('studies');

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function timeTag(iso) {
    var node = el('time', '', iso.slice(0, 16).replace('T', ' ') + ' UTC');
    node.setAttribute('datetime', iso);
    return node;
  }

  function callOf(s) {
    return s.prediction && !s.out_of_scope && !s.not_applicable ? s.prediction : 'none';
  }

  function callCell(s) {
    if (s.not_applicable) return el('span', 'muted', 'Not screened: ' + s.not_applicable);
    if (s.out_of_scope && s.prediction)
      return el('span', 'muted', 'No reliable call (out of scope); the model said ' + s.prediction);
    if (s.prediction) return el('span', 'call-' + s.prediction.toLowerCase(), s.prediction);
    return document.createTextNode('');
  }

  function reviewCell(s) {
    var parts = [];
    if (s.review_decision) {
      var p = el('p', 'decision', 'Reviewer: ');
      p.appendChild(el('strong', '', s.review_decision));
      if (s.reviewer) {
        p.appendChild(document.createTextNode(' (' + s.reviewer + ', '));
        p.appendChild(timeTag(s.reviewed_at));
        p.appendChild(document.createTextNode(')'));
      }
      parts.push(p);
    }
    if (s.flagged) {
      parts.push(el('p', 'flagged', s.review_status === 'open' ? 'Flagged: waiting for a reviewer' : 'Flagged'));
      var list = el('ul', 'reasons');
      s.flag_text.forEach(function (text) { list.appendChild(el('li', '', text)); });
      parts.push(list);
    }
    return parts;
  }

  function fill(cell, nodes) {
    cell.textContent = '';
    [].concat(nodes).forEach(function (node) { cell.appendChild(node); });
  }

  function updateRow(row, s) {
    var key = JSON.stringify(s);
    if (row.getAttribute('data-json') === key) return;  // unchanged: leave the DOM alone
    row.setAttribute('data-json', key);
    row.setAttribute('data-call', callOf(s));
    row.setAttribute('data-flagged', s.flagged ? '1' : '');
    row.setAttribute('data-status', s.status);
    row.setAttribute('data-decided', s.review_decision ? '1' : '');
    var thumb = row.querySelector('td.thumb');
    if (s.status === 'done' && !s.not_applicable && !thumb.querySelector('img')) {
      var img = el('img'); img.alt = ''; img.src = '/studies/' + s.id + '/thumb.png'; thumb.appendChild(img);
    }
    var file = row.querySelector('td.file');
    if (reader && s.status === 'done' && !file.querySelector('a')) {
      var link = el('a', '', s.filename); link.href = '/review/' + s.id; fill(file, link);
    }
    var status = [document.createTextNode(s.status)];
    if (s.error) status.push(document.createTextNode(': '), el('span', 'error', s.error));
    fill(row.querySelector('td.st'), status);
    var prob = row.querySelector('td.prob');
    prob.textContent = s.probability === null ? '' : s.probability.toFixed(3);
    prob.className = 'prob' + (s.out_of_scope ? ' muted' : '');
    fill(row.querySelector('td.call'), callCell(s));
    fill(row.querySelector('td.flag'), reviewCell(s));
    PS.showTimes(row);
  }

  function applyFilters() {
    if (!filters || !table) return;
    var call = filters.elements.call.value, show = filters.elements.show.value, shown = 0, rows = table.tBodies[0].rows;
    Array.prototype.forEach.call(rows, function (row) {
      var d = row.dataset;
      var hide = (call && d.call !== call) || (show === 'flagged' && !d.flagged) ||
                 (show === 'error' && d.status !== 'error') || (show === 'decided' && !d.decided);
      row.hidden = !!hide;
      if (!hide) shown += 1;
    });
    document.getElementById('shown').textContent = shown + ' of ' + rows.length + ' films shown';
    var query = new URLSearchParams();
    if (call) query.set('call', call);
    if (show) query.set('show', show);
    history.replaceState(null, '', location.pathname + (query.toString() ? '?' + query : ''));
  }

  function update(b) {
    summary.querySelector('.fill').style.width = b.percent + '%';
    summary.querySelector('.bar').setAttribute('aria-valuenow', b.percent);
    summary.querySelector('.pct').textContent = b.percent + '%';
    summary.querySelector('.status').textContent = b.status;
    ['queued', 'running', 'done', 'failed', 'rejected', 'flagged'].forEach(function (key) {
      summary.querySelector('dd.' + key).textContent = b[key];
    });
    if (table) b.studies.forEach(function (s) {
      var row = document.getElementById('study-' + s.id);
      if (row) updateRow(row, s);
    });
    applyFilters();
  }

  // Every 2 s while films are screened; then every 30 s, so a reviewer's decision shows up too.
  function poll() {
    PS.getJSON('/api/v1/batches/' + id).then(function (b) {
      if (b) update(b);
      var busy = !b || b.status !== 'done';
      if (busy) PS.checkWorkers();
      setTimeout(poll, busy ? 2000 : 30000);
    });
  }

  if (filters) {
    filters.addEventListener('change', applyFilters);
    filters.addEventListener('submit', function (event) { event.preventDefault(); applyFilters(); });
    filters.querySelector('button[type=submit]').hidden = true;  // filters apply as they change
    applyFilters();
  }
  setTimeout(poll, summary.getAttribute('data-status') === 'done' ? 30000 : 1000);
})();
