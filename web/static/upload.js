// The upload page: a drop zone (files and folders), a size check before sending, progress while sending.
// Without JavaScript the form still posts the chosen files as usual.
(function () {
  var form = document.getElementById('upload');
  if (!form) return;
  var dropped = [], zone = document.getElementById('dropzone');
  var chosen = document.getElementById('chosen'), errorBox = document.getElementById('upload-error');
  var JUNK = /(^|\/)(\.[^/]*|Thumbs\.db|desktop\.ini)$/i;  // hidden and system files a folder carries along

  function files() {
    var list = dropped.slice();
    form.querySelectorAll('input[type=file]').forEach(function (input) {
      Array.prototype.forEach.call(input.files, function (file) {
        list.push({file: file, name: file.webkitRelativePath || file.name});
      });
    });
    return list.filter(function (entry) { return !JUNK.test(entry.name); });
  }

  function limit() { return Number(form.getAttribute('data-max-mb')) * 1048576; }  // PNEUMOSCREEN_MAX_UPLOAD_MB

  function megabytes(bytes) {
    return bytes < 1048576 ? Math.ceil(bytes / 1024) + ' KB' : (bytes / 1048576).toFixed(1) + ' MB';
  }

  function summarise() {
    var list = files(), total = list.reduce(function (sum, e) { return sum + e.file.size; }, 0);
    chosen.textContent = list.length ? list.length + ' file' + (list.length === 1 ? '' : 's') + ' chosen, ' +
      megabytes(total) + (total > limit() ? ' — over the ' + megabytes(limit()) + ' limit for one upload' : '') : '';
    chosen.className = total > limit() ? 'error' : '';
    return {list: list, total: total};
  }

  function showError(message) {
    errorBox.innerHTML = '';
    var item = document.createElement('p');
    item.className = 'error'; item.textContent = message;
    errorBox.appendChild(item);
  }

  // Folders dropped on the zone: walk them (webkitGetAsEntry), keeping each file's path in its name.
  function walk(entry, path) {
    return new Promise(function (resolve) {
      if (entry.isFile) {
        entry.file(function (file) { dropped.push({file: file, name: path + file.name}); resolve(); }, resolve);
      } else if (entry.isDirectory) {
        var reader = entry.createReader(), all = [];
        (function more() {
          reader.readEntries(function (batch) {
            if (!batch.length) {
              Promise.all(all.map(function (e) { return walk(e, path + entry.name + '/'); })).then(resolve);
            } else { all = all.concat(Array.prototype.slice.call(batch)); more(); }
          }, resolve);
        })();
      } else resolve();
    });
  }

  ['dragenter', 'dragover'].forEach(function (name) {
    zone.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add('over'); });
  });
  zone.addEventListener('dragleave', function () { zone.classList.remove('over'); });
  zone.addEventListener('drop', function (event) {
    event.preventDefault();
    zone.classList.remove('over');
    var items = event.dataTransfer.items, waits = [];
    if (items && items.length && items[0].webkitGetAsEntry) {
      Array.prototype.forEach.call(items, function (item) {
        var entry = item.webkitGetAsEntry();
        if (entry) waits.push(walk(entry, ''));
      });
    } else {
      Array.prototype.forEach.call(event.dataTransfer.files, function (file) {
        dropped.push({file: file, name: file.name});
      });
    }
    Promise.all(waits).then(summarise);
  });
  form.querySelectorAll('input[type=file]').forEach(function (input) {
    input.addEventListener('change', summarise);
  });

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var picked = summarise();
    if (!picked.list.length) { showError('Choose at least one image, folder or .zip file.'); return; }
    if (picked.total > limit()) {
      showError('These files add up to ' + megabytes(picked.total) + ', over the ' + megabytes(limit()) +
                ' limit for one upload: send them in several smaller uploads.');
      return;
    }
    errorBox.innerHTML = '';
    var data = new FormData();
    data.append('csrf_token', form.elements.csrf_token.value);
    picked.list.forEach(function (entry) { data.append('files', entry.file, entry.name); });
    var xhr = new XMLHttpRequest(), bar = document.getElementById('upload-bar');
    var state = document.getElementById('upload-state'), button = form.querySelector('button[type=submit]');
    document.getElementById('progress').hidden = false;
    button.disabled = true;
    xhr.upload.addEventListener('progress', function (e) {
      if (!e.lengthComputable) return;
      bar.value = Math.round(100 * e.loaded / e.total);
      state.textContent = 'Sending: ' + bar.value + '% of ' + megabytes(e.total);
    });
    xhr.upload.addEventListener('load', function () {
      bar.value = 100;
      state.textContent = 'Sent; the server is checking and storing the files…';
    });
    xhr.addEventListener('load', function () {
      var landed = xhr.responseURL ? new URL(xhr.responseURL) : null;
      if (xhr.status === 200 && landed && landed.pathname !== location.pathname) {
        location.href = xhr.responseURL;  // the batch page (or login, when the session had ended)
        return;
      }
      button.disabled = false;
      document.getElementById('progress').hidden = true;
      var page = new DOMParser().parseFromString(xhr.responseText, 'text/html');
      var reason = page.querySelector('.error-page p, .flashes li');
      showError(reason ? reason.textContent : 'The upload failed (HTTP ' + xhr.status + '): try again.');
    });
    xhr.addEventListener('error', function () {
      button.disabled = false;
      showError('The connection broke off during the upload: nothing was recorded; try again.');
    });
    xhr.open('POST', form.action || location.href);
    xhr.send(data);
  });
})();
