// Keep what was typed in a form across an expired page or session (web/errors.py sends the person back
// with ?restore=1, after login when the session had ended). Opt in with <form data-keep>; passwords, files
// and hidden fields are never kept. Kept in sessionStorage (this tab only), per page, for at most 12 hours.
//   <form method="post" data-keep> ... <textarea name="note"></textarea> ... </form>
//   <script src="/static/keep_form.js"></script>   (base.html loads it on every page)
// KeepForm.stash() keeps the page's forms now (the idle logoff calls it).
(function () {
  var PREFIX = 'keep:', MAX_AGE_MS = 12 * 3600 * 1000;
  var KEPT = 'textarea, select, input:not([type=password]):not([type=hidden]):not([type=file])' +
             ':not([type=submit]):not([type=button])';

  function key() { return PREFIX + location.pathname; }

  function fields(form) {
    var values = {};
    form.querySelectorAll(KEPT).forEach(function (field) {
      if (!field.name) return;
      values[field.name] = (field.type === 'checkbox' || field.type === 'radio') ? field.checked : field.value;
    });
    return values;
  }

  function stash() {
    var forms = Array.prototype.map.call(document.querySelectorAll('form[data-keep]'), fields);
    if (forms.length) sessionStorage.setItem(key(), JSON.stringify({at: Date.now(), forms: forms}));
  }

  function restore(kept) {
    document.querySelectorAll('form[data-keep]').forEach(function (form, index) {
      var values = kept.forms[index] || {};
      form.querySelectorAll(KEPT).forEach(function (field) {
        if (!(field.name in values)) return;
        if (field.type === 'checkbox' || field.type === 'radio') field.checked = values[field.name];
        else field.value = values[field.name];
      });
    });
  }

  function load() {
    Object.keys(sessionStorage).forEach(function (name) {  // forget old ones
      if (name.indexOf(PREFIX) !== 0) return;
      try { if (Date.now() - JSON.parse(sessionStorage.getItem(name)).at > MAX_AGE_MS) sessionStorage.removeItem(name); }
      catch (e) { sessionStorage.removeItem(name); }
    });
    var params = new URLSearchParams(location.search), raw = sessionStorage.getItem(key());
    if (params.get('restore') === '1') {
      if (raw) restore(JSON.parse(raw));
      params.delete('restore');
      var query = params.toString();
      history.replaceState(null, '', location.pathname + (query ? '?' + query : '') + location.hash);
    }
    sessionStorage.removeItem(key());  // kept once: a later visit starts empty
    document.querySelectorAll('form[data-keep]').forEach(function (form) {
      form.addEventListener('submit', stash);
    });
  }

  window.KeepForm = {stash: stash};
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', load); else load();
})();
