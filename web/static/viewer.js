// Reviewer workstation: window/level on the film, zoom and pan, heatmap overlay, decision keys P/N/U.
(function () {
  var box = document.getElementById('workstation');
  if (!box) return;
  var canvas = document.getElementById('film'), stage = document.getElementById('stage');
  var ww = document.getElementById('ww'), wl = document.getElementById('wl'), zoom = document.getElementById('zoom');
  var heatmap = document.getElementById('heatmap'), toggle = document.getElementById('heatmap-toggle');
  var ctx = canvas.getContext('2d'), film = new Image(), original = null, fit = 1, pan = {x: 0, y: 0};

  film.onload = function () {
    canvas.width = film.naturalWidth; canvas.height = film.naturalHeight;
    ctx.drawImage(film, 0, 0);
    original = ctx.getImageData(0, 0, canvas.width, canvas.height);
    fit = Math.min(stage.clientWidth / canvas.width, stage.clientHeight / canvas.height);
    render(); place();
    box.dataset.ready = '1';
  };
  film.src = box.dataset.src;

  // Window/level on the 8-bit view: a 256-entry lookup table, applied to the grey channel.
  function render() {
    if (!original) return;
    var width = +ww.value, level = +wl.value, low = level - width / 2, lut = new Uint8ClampedArray(256);
    for (var v = 0; v < 256; v++) lut[v] = (v - low) / width * 255;
    var out = ctx.createImageData(original), src = original.data, dst = out.data;
    for (var i = 0; i < src.length; i += 4) {
      dst[i] = dst[i + 1] = dst[i + 2] = lut[src[i]]; dst[i + 3] = 255;
    }
    ctx.putImageData(out, 0, 0);
    box.dataset.window = width + '/' + level;
  }

  function place() {
    var scale = fit * +zoom.value, t = 'translate(' + pan.x + 'px,' + pan.y + 'px) scale(' + scale + ')';
    canvas.style.transform = t;
    if (heatmap) {
      heatmap.style.width = canvas.width + 'px'; heatmap.style.height = canvas.height + 'px';
      heatmap.style.transform = t;
    }
  }

  function reset() { ww.value = 255; wl.value = 128; zoom.value = 1; pan = {x: 0, y: 0}; render(); place(); }

  ww.addEventListener('input', render);
  wl.addEventListener('input', render);
  zoom.addEventListener('input', place);
  document.getElementById('reset').addEventListener('click', reset);
  if (toggle) toggle.addEventListener('change', function () { heatmap.hidden = !toggle.checked; });
  stage.addEventListener('wheel', function (e) {
    e.preventDefault();
    zoom.value = Math.min(4, Math.max(1, +zoom.value + (e.deltaY < 0 ? 0.25 : -0.25))); place();
  });
  stage.addEventListener('mousedown', function (e) {
    var start = {x: e.clientX - pan.x, y: e.clientY - pan.y};
    function move(m) { pan = {x: m.clientX - start.x, y: m.clientY - start.y}; place(); }
    function up() { window.removeEventListener('mousemove', move); window.removeEventListener('mouseup', up); }
    window.addEventListener('mousemove', move); window.addEventListener('mouseup', up);
  });

  // Decision keys: never while typing a note.
  document.addEventListener('keydown', function (e) {
    if (e.target.closest('textarea, input[type=text]') || e.ctrlKey || e.metaKey || e.altKey) return;
    var key = e.key.toLowerCase();
    var button = document.querySelector('.decision button[data-key="' + key + '"]');
    if (button) { e.preventDefault(); button.click(); }
    else if (key === 'h' && toggle) { toggle.click(); }
    else if (key === 'r') { reset(); }
  });
})();
