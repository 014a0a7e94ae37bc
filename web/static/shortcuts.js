// Reader keyboard shortcuts: single keys that can be switched off or remapped (WCAG 2.1.4), kept in localStorage.
window.Shortcuts = (function () {
  var STORE = 'pneumoscreen.shortcuts';
  var DEFAULTS = {pneumonia: 'p', normal: 'n', unreadable: 'u', undo: 'z', next: 'j', previous: 'k',
                  heatmap: 'h', fit: 'f', invert: 'i'};
  var settings = load();

  function load() {
    var stored = {};
    try { stored = JSON.parse(localStorage.getItem(STORE) || '{}') || {}; } catch (e) { stored = {}; }
    var keys = {};
    Object.keys(DEFAULTS).forEach(function (name) {
      var key = stored.keys && stored.keys[name];
      keys[name] = typeof key === 'string' && key.length === 1 ? key.toLowerCase() : DEFAULTS[name];
    });
    return {enabled: stored.enabled !== false, keys: keys};
  }

  function save() { try { localStorage.setItem(STORE, JSON.stringify(settings)); } catch (e) { /* private mode */ } }

  function label() {
    document.querySelectorAll('kbd[data-shortcut]').forEach(function (kbd) {
      kbd.textContent = settings.keys[kbd.dataset.shortcut].toUpperCase();
      kbd.hidden = !settings.enabled;
    });
  }

  // The action a key press stands for, or null: never while typing, with a modifier, or for a held key.
  function action(event) {
    if (!settings.enabled || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return null;
    if (event.target.closest && event.target.closest('textarea, input, select, [contenteditable]')) return null;
    var key = (event.key || '').toLowerCase();
    var names = Object.keys(settings.keys);
    for (var i = 0; i < names.length; i++) if (settings.keys[names[i]] === key) return names[i];
    return null;
  }

  function settingsPanel() {
    var on = document.getElementById('keys-on'), map = document.getElementById('keymap');
    if (!on || !map) return;
    on.checked = settings.enabled;
    on.addEventListener('change', function () { settings.enabled = on.checked; save(); label(); });
    Object.keys(DEFAULTS).forEach(function (name) {
      var wrap = document.createElement('label'), input = document.createElement('input');
      input.maxLength = 1; input.value = settings.keys[name]; input.dataset.action = name;
      input.addEventListener('change', function () {
        var key = input.value.trim().toLowerCase();
        var clash = Object.keys(settings.keys).some(function (other) { return other !== name && settings.keys[other] === key; });
        if (key.length !== 1 || clash) { input.value = settings.keys[name]; input.setCustomValidity('one key, not used by another action'); input.reportValidity(); return; }
        input.setCustomValidity(''); settings.keys[name] = key; save(); label();
      });
      wrap.appendChild(input); wrap.appendChild(document.createTextNode(' ' + name));
      map.appendChild(wrap);
    });
  }

  label();
  settingsPanel();
  return {action: action, settings: settings};
})();
