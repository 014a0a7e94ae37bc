// Diagnostic viewer: the stored film at its bit depth (GET /review/<id>/film, models/film.py format), window/level
// on the real values (drag, presets), zoom at the cursor, fit and 1:1, pan, invert, heatmap overlaid or side by
// side; then safe decisions: keys only once the film is drawn, no key repeat, a 5 s undo, decided cases locked.
(function () {
  var box = document.getElementById('workstation');
  if (!box) return;
  var stage = document.getElementById('stage'), canvas = document.getElementById('film');
  var ctx = canvas.getContext('2d'), readout = document.getElementById('readout');
  var heatMode = document.getElementById('heat-mode'), heatOpacity = document.getElementById('heat-opacity');
  var legend = document.getElementById('legend');
  var film = null, pixels = null, offscreen = document.createElement('canvas'), heat = null;
  var view = {center: 0, width: 1, invert: false, zoom: 1, x: 0, y: 0}, pending = false;

  // ---- loading -------------------------------------------------------------------------------------------------
  fetch(box.dataset.film, {credentials: 'same-origin'})
    .then(function (r) { if (!r.ok) throw new Error(r.status); return r.arrayBuffer(); })
    .then(parse)
    .catch(function () { return previewInstead(); })
    .then(start);

  function parse(buffer) {
    var bytes = new Uint8Array(buffer);
    if (String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]) !== 'PSF1') throw new Error('format');
    var length = new DataView(buffer).getUint32(4, true);
    var header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
    header.pixels = new Uint16Array(buffer, 8 + length, header.width * header.height);
    return header;
  }

  // The original cannot be shown (purged, undecodable): the 8-bit preview, said so.
  function previewInstead() {
    return new Promise(function (resolve) {
      var image = new Image();
      image.onload = function () {
        var c = document.createElement('canvas'); c.width = image.naturalWidth; c.height = image.naturalHeight;
        var g = c.getContext('2d'); g.drawImage(image, 0, 0);
        var rgba = g.getImageData(0, 0, c.width, c.height).data, grey = new Uint16Array(c.width * c.height);
        for (var i = 0; i < grey.length; i++) grey[i] = rgba[i * 4];
        document.getElementById('film-note').textContent = ' · Original not available: 8-bit preview shown.';
        resolve({width: c.width, height: c.height, bits: 8, slope: 1, intercept: 0, invert: false, pixels: grey,
                 original_width: c.width, original_height: c.height, kind: 'preview',
                 presets: {'default': [127.5, 256], lung: [95.5, 192], full: [127.5, 256]}});
      };
      image.onerror = function () { resolve(null); };
      image.src = box.dataset.view;
    });
  }

  function start(header) {
    document.getElementById('loading').hidden = true;
    if (!header) { document.getElementById('film-note').textContent = ' · The film cannot be shown.'; ready(); return; }
    film = header; pixels = header.pixels;
    offscreen.width = film.width; offscreen.height = film.height;
    view.invert = !!film.invert;
    if (film.original_width > film.width) {
      document.getElementById('film-note').textContent = ' · Shown at ' + film.width + '×' + film.height + ' of ' +
        film.original_width + '×' + film.original_height + ' px.';
    }
    preset('default'); fit();
    if (box.dataset.heatmap) loadHeatmap();
    window.addEventListener('resize', function () { fit(); });
    ready();
  }

  function loadHeatmap() {
    var image = new Image();
    image.onload = function () { heat = image; draw(); };
    image.src = box.dataset.heatmap;
  }

  // ---- window/level ----------------------------------------------------------------------------------------------
  var windowQueued = false;
  function applyWindow() {
    if (windowQueued || !film) return;
    windowQueued = true;
    requestAnimationFrame(function () {
      windowQueued = false;
      var levels = film.bits > 8 ? 65536 : 256, lut = new Uint32Array(levels);
      var low = view.center - 0.5 - (view.width - 1) / 2, span = Math.max(view.width - 1, 1);
      for (var v = 0; v < levels; v++) {
        var t = Math.min(1, Math.max(0, (v - low) / span)), g = Math.round((view.invert ? 1 - t : t) * 255);
        lut[v] = 0xff000000 | (g << 16) | (g << 8) | g;
      }
      var g2 = offscreen.getContext('2d'), image = g2.createImageData(film.width, film.height);
      var out = new Uint32Array(image.data.buffer), n = pixels.length;
      for (var i = 0; i < n; i++) out[i] = lut[pixels[i]];
      g2.putImageData(image, 0, 0);
      var real = film.slope, center = view.center * real + film.intercept, width = view.width * Math.abs(real);
      readout.textContent = 'W ' + Math.round(width) + ' · L ' + Math.round(center) + (view.invert ? ' · inverted' : '') +
        ' · ' + Math.round(view.zoom * 100) + '%';
      box.dataset.window = Math.round(width) + '/' + Math.round(center);
      draw();
    });
  }

  function preset(name) {
    var p = film.presets[name] || film.presets['default'];
    view.center = p[0]; view.width = Math.max(1, p[1]);
    document.querySelectorAll('[data-preset]').forEach(function (b) { b.setAttribute('aria-pressed', b.dataset.preset === name); });
    box.dataset.windowPreset = name;
    applyWindow();
  }

  // ---- drawing ---------------------------------------------------------------------------------------------------
  function side() { return heat && heatMode && heatMode.value === 'side'; }

  function size() {
    var ratio = window.devicePixelRatio || 1, w = stage.clientWidth, h = stage.clientHeight;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio);
    }
    return {w: w, h: h, ratio: ratio};
  }

  function draw() {
    if (!film) return;
    var s = size(), panes = side() ? 2 : 1, paneWidth = s.w / panes;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#000'; ctx.fillRect(0, 0, canvas.width, canvas.height);
    for (var pane = 0; pane < panes; pane++) {
      ctx.save();
      ctx.setTransform(s.ratio, 0, 0, s.ratio, 0, 0);
      ctx.beginPath(); ctx.rect(pane * paneWidth, 0, paneWidth, s.h); ctx.clip();
      ctx.translate(pane * paneWidth + view.x, view.y); ctx.scale(view.zoom, view.zoom);
      ctx.imageSmoothingEnabled = view.zoom < 1;  // magnified: real pixels, not a blur
      ctx.drawImage(offscreen, 0, 0);
      var overlay = heat && heatMode && (heatMode.value === 'overlay' || (pane === 1));
      if (overlay) {
        ctx.globalAlpha = +heatOpacity.value / 100; ctx.globalCompositeOperation = 'screen';
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(heat, 0, 0, film.width, film.height);
      }
      ctx.restore();
    }
    if (legend) legend.hidden = !(heat && heatMode.value !== 'off');
  }

  function fit() {
    if (!film) return;
    var s = size(), w = s.w / (side() ? 2 : 1);
    view.zoom = Math.min(w / film.width, s.h / film.height);
    view.x = (w - film.width * view.zoom) / 2; view.y = (s.h - film.height * view.zoom) / 2;
    applyWindow();
  }

  function zoomAt(factor, x, y) {
    var zoom = Math.min(32, Math.max(0.05, view.zoom * factor));
    factor = zoom / view.zoom;
    view.x = x - (x - view.x) * factor; view.y = y - (y - view.y) * factor; view.zoom = zoom;
    applyWindow();
  }

  // ---- mouse -----------------------------------------------------------------------------------------------------
  stage.addEventListener('contextmenu', function (e) { e.preventDefault(); });
  stage.addEventListener('wheel', function (e) {
    if (!film) return;
    e.preventDefault();
    var rect = stage.getBoundingClientRect(), x = e.clientX - rect.left, paneWidth = rect.width / (side() ? 2 : 1);
    zoomAt(Math.exp(-e.deltaY * 0.0015), x % paneWidth, e.clientY - rect.top);
  }, {passive: false});
  stage.addEventListener('mousedown', function (e) {
    if (!film) return;
    e.preventDefault();
    var panning = e.shiftKey || e.button !== 0, last = {x: e.clientX, y: e.clientY};
    var step = Math.max(film.presets.full[1], 1) / 600;  // one screen pixel of drag, in pixel values
    stage.style.cursor = panning ? 'grabbing' : 'ns-resize';
    function move(m) {
      var dx = m.clientX - last.x, dy = m.clientY - last.y; last = {x: m.clientX, y: m.clientY};
      if (panning) { view.x += dx; view.y += dy; draw(); return; }
      view.width = Math.max(1, view.width + dx * step); view.center += dy * step;
      box.dataset.windowPreset = ''; applyWindow();
    }
    function up() { stage.style.cursor = ''; window.removeEventListener('mousemove', move); window.removeEventListener('mouseup', up); }
    window.addEventListener('mousemove', move); window.addEventListener('mouseup', up);
  });

  // ---- tools -----------------------------------------------------------------------------------------------------
  document.querySelectorAll('[data-preset]').forEach(function (b) {
    b.addEventListener('click', function () { if (film) preset(b.dataset.preset); });
  });
  document.getElementById('fit').addEventListener('click', fit);
  document.getElementById('one').addEventListener('click', function () {
    if (!film) return;
    var s = size(); zoomAt(1 / s.ratio / view.zoom, s.w / (side() ? 4 : 2), s.h / 2);
  });
  var invert = document.getElementById('invert');
  invert.addEventListener('click', function () {
    if (!film) return;
    view.invert = !view.invert; invert.setAttribute('aria-pressed', view.invert !== !!film.invert); applyWindow();
  });
  if (heatMode) {
    heatMode.addEventListener('change', function () { fit(); });
    heatOpacity.addEventListener('input', draw);
  }

  // ---- decisions -------------------------------------------------------------------------------------------------
  var form = document.getElementById('decision-form'), fieldset = document.getElementById('decide');
  var pendingBox = document.getElementById('pending'), pendingText = document.getElementById('pending-text');
  var timer = null, UNDO_SECONDS = 5;

  function ready() {
    box.dataset.ready = '1';
    if (form && !form.dataset.decided) setDecisionsEnabled(true);
  }

  function setDecisionsEnabled(on) {
    if (!form) return;
    form.querySelectorAll('button[data-decision]').forEach(function (b) { b.disabled = !on; });
  }
  if (form) {
    setDecisionsEnabled(false);  // until the film is drawn
    form.querySelectorAll('button[data-decision]').forEach(function (b) {
      b.addEventListener('click', function (e) { e.preventDefault(); decide(b.dataset.decision); });
    });
    var change = document.getElementById('change-decision');
    if (change) change.addEventListener('click', function () {
      fieldset.disabled = false; delete form.dataset.decided; setDecisionsEnabled(box.dataset.ready === '1');
      document.getElementById('locked').hidden = true; document.getElementById('note').focus();
    });
    document.getElementById('undo').addEventListener('click', undo);
  }

  function decide(decision) {
    if (!form || pending || fieldset.disabled || box.dataset.ready !== '1') return;
    pending = true;
    var value = document.getElementById('decision-value');
    value.name = 'decision'; value.value = decision;
    setDecisionsEnabled(false);
    var left = UNDO_SECONDS;
    pendingBox.hidden = false; box.dataset.pending = decision;
    function tick() {
      pendingText.textContent = 'Recording ' + decision + ' in ' + left + ' s…';
      if (left-- <= 0) { pendingText.textContent = 'Recording ' + decision + '…'; form.submit(); return; }
      timer = setTimeout(tick, 1000);
    }
    tick();
  }

  function undo() {
    if (!pending) return;
    clearTimeout(timer); pending = false; delete box.dataset.pending;
    pendingBox.hidden = true; setDecisionsEnabled(true);
    document.getElementById('decision-value').removeAttribute('name');
    var status = document.getElementById('readout'); status.textContent = 'Decision undone';
  }

  // Keep the claim while the page is open, and warn at once when another reader decided meanwhile.
  function keepClaim() {
    if (document.hidden || !form) return;
    var token = document.querySelector('meta[name=csrf-token]');
    fetch(box.dataset.claim, {method: 'POST', credentials: 'same-origin',
                              headers: {'X-CSRFToken': token ? token.content : '', 'Accept': 'application/json'}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (state) {
        var version = form.querySelector('input[name=version]'), changed = document.getElementById('changed');
        if (!state || !version || String(state.version) === version.value || !state.latest) return;
        changed.textContent = 'Changed while you read: ' + state.latest.reviewer + ' recorded ' + state.latest.decision +
          '. A decision from this page will be refused; reload to see their read.';
        changed.hidden = false; box.dataset.changed = '1';
      });
  }
  setInterval(keepClaim, 60000);
  document.addEventListener('visibilitychange', keepClaim);

  document.addEventListener('keydown', function (e) {
    if (e.key === 'Escape' && pending) { e.preventDefault(); undo(); return; }
    var name = window.Shortcuts.action(e);
    if (!name || box.dataset.ready !== '1') return;  // nothing acts before the film is drawn
    var link;
    e.preventDefault();
    if (name === 'pneumonia' || name === 'normal' || name === 'unreadable') decide(name);
    else if (name === 'undo') undo();
    else if (name === 'next' && !pending && (link = document.getElementById('next-case'))) location.href = link.href;
    else if (name === 'previous' && !pending && (link = document.getElementById('prev-case'))) location.href = link.href;
    else if (name === 'fit') fit();
    else if (name === 'invert') invert.click();
    else if (name === 'heatmap' && heatMode) {
      heatMode.selectedIndex = (heatMode.selectedIndex + 1) % heatMode.options.length; fit();
    }
  });
})();
