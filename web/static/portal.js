// Every portal page: confirmations, copy buttons, the idle logoff, and the JSON polling helper
// (a lost session goes back to login; a stopped worker shows a banner).
(function () {
  var PS = window.PS = {};

  // Local times: times.js (loaded before this) shows every <time datetime> in the reader's zone.
  PS.showTimes = function (root) { if (window.localTimes) window.localTimes(root); };

  PS.login = function () {
    location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search);
  };

  // GET JSON for a page that polls: null on failure; back to login on 401.
  PS.getJSON = function (url) {
    return fetch(url, {credentials: 'same-origin', headers: {'Accept': 'application/json'}})
      .then(function (r) {
        if (r.status === 401) { PS.login(); return null; }
        return r.ok ? r.json() : null;
      })
      .catch(function () { return null; });
  };

  // Studies wait and no worker has a fresh heartbeat (/healthz): say so instead of "running" forever.
  var lastHealth = 0;
  PS.checkWorkers = function () {
    if (Date.now() - lastHealth < 10000) return;
    lastHealth = Date.now();
    PS.getJSON('/healthz').then(function (h) {
      var banner = document.getElementById('worker-banner');
      if (!banner || !h) return;
      var stuck = h.workers_alive === 0 && h.studies_waiting > 0;
      banner.hidden = !stuck;
      if (stuck) banner.textContent = 'No screening worker is running: ' + h.studies_waiting + ' studies are ' +
        'waiting and will not progress. Ask an administrator to start one (pneumoscreen worker).';
    });
  };

  function confirmations() {
    document.addEventListener('submit', function (event) {
      var message = event.target.getAttribute('data-confirm');
      if (message && !window.confirm(message)) event.preventDefault();
    });
  }

  function copyButtons() {
    document.querySelectorAll('button[data-copy]').forEach(function (button) {
      button.hidden = false;
      button.addEventListener('click', function () {
        var text = document.getElementById(button.getAttribute('data-copy')).textContent.trim();
        var done = function () { button.textContent = 'Copied'; };
        if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done);
        else {
          var area = document.createElement('textarea');
          area.value = text; document.body.appendChild(area); area.select();
          document.execCommand('copy'); area.remove(); done();
        }
      });
    });
  }

  // Idle logoff: shared by this browser's tabs (localStorage); activity pings the server at most once a
  // minute so its session (PNEUMOSCREEN_SESSION_IDLE_MINUTES) lives as long as the person is active.
  function idleLogoff() {
    var minutes = Number(document.body.getAttribute('data-idle-minutes'));
    var form = document.querySelector('form.logout');
    if (!minutes || !form) return;
    var limit = minutes * 60000, warnAt = limit - 60000, lastPing = Date.now(), KEY = 'ps-activity';
    var warning = document.getElementById('idle-warning');
    localStorage.setItem(KEY, String(Date.now()));
    function ping() {
      lastPing = Date.now();
      fetch('/session/ping', {credentials: 'same-origin', headers: {'Accept': 'application/json'}})
        .then(function (r) { if (r.status === 401 || r.redirected) PS.login(); });
    }
    function active() {
      localStorage.setItem(KEY, String(Date.now()));
      if (!warning.hidden) warning.hidden = true;
      if (Date.now() - lastPing > 60000) ping();
    }
    ['keydown', 'mousedown', 'wheel', 'touchstart'].forEach(function (name) {
      document.addEventListener(name, active, {passive: true});
    });
    document.getElementById('idle-stay').addEventListener('click', function () { active(); ping(); });
    setInterval(function () {
      var idle = Date.now() - Number(localStorage.getItem(KEY) || Date.now());
      if (idle >= limit - 5000) {
        if (window.KeepForm) window.KeepForm.stash();
        form.elements.next.value = location.pathname + location.search +
          (location.search ? '&' : '?') + 'restore=1';
        form.elements.idle.value = '1';
        form.submit();
      } else if (idle >= warnAt) {
        warning.hidden = false;
      }
    }, 5000);
  }

  function start() {
    confirmations();
    copyButtons();
    idleLogoff();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
