// `mvbatch review` only: verdicts and notes go to the server, and the page
// follows the server every 2 s. Cards whose HTML changed are replaced (a
// playing video whose file did not change moves into the new card, so it
// keeps playing); a new layout fetches the page again and swaps the grid in
// place. The only HTML parsed is the server's own (card fragments, its page).
(function () {
  'use strict';
  var doc = document;
  var meta = doc.querySelector('meta[name="mvbatch-token"]');
  var token = meta ? meta.content : '';
  var status = doc.getElementById('review-status');
  var sheet = doc.getElementById('sheet');
  var layout = sheet ? sheet.dataset.layout : '';
  var version = null;
  var seen = {};
  var busy = false;

  function say(text) { if (status) { status.textContent = text; } }
  function api(path, options) {
    options = options || {};
    options.headers = Object.assign({ 'X-Mvbatch-Token': token }, options.headers || {});
    options.credentials = 'same-origin';
    options.cache = 'no-store';
    return fetch(path, options).then(function (response) {
      if (!response.ok) { throw new Error(path + ': HTTP ' + response.status); }
      return response;
    });
  }
  function cardsOf(key) {
    return Array.prototype.slice.call(doc.querySelectorAll('#sheet .take[data-key="' + CSS.escape(key) + '"]'));
  }
  function noteOf(card) {
    var note = card.querySelector('textarea[name="note"]');
    return note && note.value.trim() ? note.value : null;
  }
  function show(card, answer) {
    card.dataset.verdict = answer.verdict || '';
    card.querySelectorAll('button[data-action]').forEach(function (button) {
      var pressed = (button.dataset.action === 'approve' ? 'approved' : 'rejected') === answer.verdict;
      button.setAttribute('aria-pressed', pressed ? 'true' : 'false');
    });
    var note = card.querySelector('textarea[name="note"]');
    if (note && doc.activeElement !== note) { note.value = answer.note || ''; }
    if (note) { note.dataset.saved = answer.note || ''; }
  }
  function send(card, verdict, note) {
    var key = card.dataset.key;
    card.classList.add('saving');
    return api('/api/verdict', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ key: key, verdict: verdict, note: note })
    }).then(function (response) { return response.json(); }).then(function (answer) {
      cardsOf(answer.key || key).forEach(function (c) { show(c, answer); });
      say('saved ' + (answer.verdict || 'no verdict') + (answer.at ? ' at ' + answer.at : ''));
      if (window.mvbatchSheet) { window.mvbatchSheet.refresh(); }
    }).catch(function (error) {
      say('not saved: ' + error.message);
    }).then(function () { card.classList.remove('saving'); });
  }

  doc.addEventListener('click', function (event) {
    var button = event.target.closest && event.target.closest('.take button[data-action]');
    if (!button) { return; }
    var card = button.closest('.take');
    var wanted = button.dataset.action === 'approve' ? 'approved' : 'rejected';
    send(card, card.dataset.verdict === wanted ? null : wanted, noteOf(card));
  });
  function saveNote(note) {
    var card = note.closest('.take');
    if (!card || note.value === (note.dataset.saved || '')) { return; }
    note.dataset.saved = note.value;
    send(card, card.dataset.verdict || null, noteOf(card));
  }
  doc.addEventListener('focusout', function (event) {
    if (event.target.matches && event.target.matches('.take textarea[name="note"]')) { saveNote(event.target); }
  });
  doc.addEventListener('keydown', function (event) {
    var note = event.target;
    if (event.key !== 'Enter' || event.shiftKey || !(note.matches && note.matches('.take textarea[name="note"]'))) { return; }
    event.preventDefault();
    saveNote(note);
    note.blur();
  });
  doc.querySelectorAll('.take textarea[name="note"]').forEach(function (note) { note.dataset.saved = note.value; });

  // A card that was playing keeps its video element (and so its time and state).
  function adopt(old, fresh) {
    var before = old.querySelector('video');
    var after = fresh.querySelector('video');
    if (before && after && before.dataset.src === after.dataset.src) { after.replaceWith(before); }
    if (old.classList.contains('current')) { fresh.classList.add('current'); }
    fresh.querySelectorAll('textarea[name="note"]').forEach(function (note) { note.dataset.saved = note.value; });
  }
  function fragment(html) {
    var template = doc.createElement('template');
    template.innerHTML = html; // the review server's own card, rendered by take.html.j2
    var card = template.content.firstElementChild;
    return card && card.classList.contains('take') ? card : null;
  }
  function editing(card) {
    var active = doc.activeElement;
    return active && active.tagName === 'TEXTAREA' && card.contains(active);
  }
  function swapGrid(next) {
    return api('/', { headers: { Accept: 'text/html' } }).then(function (response) { return response.text(); }).then(function (text) {
      var fresh = new DOMParser().parseFromString(text, 'text/html').getElementById('sheet');
      var live = doc.getElementById('sheet');
      if (!fresh || !live) { return; }
      var kept = {};
      live.querySelectorAll('.take').forEach(function (card) { kept[card.dataset.key] = card; });
      fresh = doc.importNode(fresh, true);
      fresh.querySelectorAll('.take').forEach(function (card) {
        var old = kept[card.dataset.key];
        if (old) { adopt(old, card); }
      });
      live.replaceWith(fresh);
      layout = fresh.dataset.layout || next;
      version = null;
      seen = {};
      if (window.mvbatchSheet) { window.mvbatchSheet.refresh(); }
    });
  }
  function poll() {
    if (busy) { return; }
    busy = true;
    api('/api/cards').then(function (response) { return response.json(); }).then(function (data) {
      if (data.layout !== layout) { return swapGrid(data.layout); }
      if (data.version === version) { return; }
      var deferred = false;
      var changed = false;
      Object.keys(data.cards).forEach(function (key) {
        var html = data.cards[key];
        if (seen[key] === html) { return; }
        var fresh = fragment(html);
        if (!fresh) { return; }
        var wait = false;
        cardsOf(key).forEach(function (old) {
          if (old.dataset.rev === fresh.dataset.rev) { return; }
          if (editing(old)) { wait = true; return; }
          var copy = fresh.cloneNode(true);
          adopt(old, copy);
          old.replaceWith(copy);
          changed = true;
        });
        if (wait) { deferred = true; } else { seen[key] = html; }
      });
      version = deferred ? null : data.version;
      if (changed && window.mvbatchSheet) { window.mvbatchSheet.refresh(); }
    }).catch(function (error) {
      say('cannot reach the review server: ' + error.message);
    }).then(function () { busy = false; });
  }
  setInterval(poll, 2000);
})();
