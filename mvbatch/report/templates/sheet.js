// The contact sheet's script (inline, allowed by its sha256 in the page's CSP).
// Lazy first frames, filters and sort, keyboard review, a row played in sync.
// It reads data-* attributes only and never builds HTML. `mvbatch review`
// adds review.js, which calls window.mvbatchSheet.refresh() after it swaps cards.
(function () {
  'use strict';
  var doc = document;
  var controls = doc.getElementById('controls');
  var current = null;

  function all(selector, root) {
    return Array.prototype.slice.call((root || doc).querySelectorAll(selector));
  }
  function takes() { return all('#sheet .take'); }
  function shown(take) { return !take.hidden && !take.closest('tr[hidden]'); }
  function field(name) {
    var el = controls && controls.querySelector('[name="' + name + '"]');
    return el ? el.value : '';
  }

  // A video gets its src and its controls when its card nears the viewport
  // (or is played): 500 video elements are cheap, 500 media players are not.
  // Without a poster, the browser is asked for the first frame there too.
  function arm(video) {
    if (video.getAttribute('src') || !video.dataset.src) { return; }
    if (!video.closest('.take[data-poster]')) { video.preload = 'metadata'; }
    video.controls = true;
    video.src = video.dataset.src;
  }
  // Far from the viewport again and not playing: give the player back, so
  // scrolling through hundreds of takes keeps memory flat (the poster stays).
  function disarm(video) {
    if (!video.getAttribute('src') || !video.paused) { return; }
    video.removeAttribute('src');
    video.controls = false;
    video.preload = 'none';
    video.load();
  }
  // The grid scrolls inside .sheet-wrap: that is the observer's root, so the
  // margin reaches below its visible part (the review page may replace it).
  var lazy = null;
  var lazyRoot = null;
  var watched = null;
  function observe() {
    var root = doc.querySelector('#sheet .sheet-wrap');
    if (!('IntersectionObserver' in window)) {
      all('#sheet video[data-src]:not([src])').forEach(arm);
      return;
    }
    if (!lazy || lazyRoot !== root) {
      if (lazy) { lazy.disconnect(); }
      lazyRoot = root;
      watched = new WeakSet();
      lazy = new IntersectionObserver(function (entries) {
        entries.forEach(function (entry) {
          if (entry.isIntersecting) { arm(entry.target); } else { disarm(entry.target); }
        });
      }, { root: root, rootMargin: '600px 200px' });
    }
    all('#sheet video[data-src]').forEach(function (video) {
      if (!watched.has(video)) { watched.add(video); lazy.observe(video); }
    });
  }

  // ---- filters and sort
  function keep(take, f) {
    if (f.model && take.dataset.model !== f.model) { return false; }
    if (f.status && take.dataset.group !== f.status) { return false; }
    if (f.verdict && (take.dataset.verdict || 'none') !== f.verdict) { return false; }
    var cost = parseFloat(take.dataset.cost);
    if (!isNaN(f.min) && !(cost >= f.min)) { return false; }
    if (!isNaN(f.max) && !(cost <= f.max)) { return false; }
    return true;
  }
  function rowKey(row, by) {
    var visible = all('.take:not([hidden])', row);
    var sum = 0, failed = 0, open = 0;
    visible.forEach(function (t) {
      sum += parseFloat(t.dataset.cost) || 0;
      if (t.dataset.group === 'failed') { failed += 1; }
      if (!t.dataset.verdict) { open += 1; }
    });
    if (by === 'cost-desc') { return -sum; }
    if (by === 'cost-asc') { return sum; }
    if (by === 'model') { return visible.length ? visible[0].dataset.model : '\uffff'; }
    if (by === 'status') { return -failed; }
    if (by === 'verdict') { return -open; }
    return 0;
  }
  function sortRows() {
    var body = doc.querySelector('#sheet tbody');
    if (!body) { return; }
    var by = field('sort');
    var rows = all('tr.shot', body).map(function (row) {
      return { row: row, key: rowKey(row, by), order: +row.dataset.order };
    });
    rows.sort(function (a, b) {
      if (a.key < b.key) { return -1; }
      if (a.key > b.key) { return 1; }
      return a.order - b.order;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  function apply() {
    var f = {
      model: field('model'), status: field('status'), verdict: field('verdict'),
      min: parseFloat(field('cost-min')), max: parseFloat(field('cost-max'))
    };
    var count = 0;
    takes().forEach(function (take) {
      take.hidden = !keep(take, f);
      if (!take.hidden) { count += 1; }
    });
    all('#sheet tr.shot').forEach(function (row) { row.hidden = !row.querySelector('.take:not([hidden])'); });
    var counter = doc.getElementById('shown');
    if (counter) { counter.textContent = String(count); }
    sortRows();
    if (current && !doc.contains(current)) {
      current = doc.querySelector('#sheet .take.current'); // the card was replaced (review)
    }
    if (!current || !shown(current)) {
      setCurrent(takes().filter(shown)[0] || null, false);
    }
  }
  if (controls) {
    controls.addEventListener('input', apply);
    controls.addEventListener('change', apply);
  }

  // ---- the current take and the keyboard
  function setCurrent(take, scroll) {
    if (current) { current.classList.remove('current'); }
    current = take;
    if (!take) { return; }
    take.classList.add('current');
    if (scroll) { take.scrollIntoView({ block: 'nearest', inline: 'nearest' }); }
  }
  function step(delta) {
    var list = takes().filter(shown);
    if (!list.length) { return; }
    var at = list.indexOf(current);
    at = at < 0 ? 0 : Math.max(0, Math.min(list.length - 1, at + delta));
    setCurrent(list[at], true);
  }
  doc.addEventListener('click', function (event) {
    var take = event.target.closest && event.target.closest('#sheet .take');
    if (take) { setCurrent(take, false); }
    if (event.target.tagName === 'VIDEO') { delete event.target.dataset.preview; }
    var button = event.target.closest && event.target.closest('button[data-action="play-row"]');
    if (button) { playRow(button.closest('tr')); }
  });
  doc.addEventListener('keydown', function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) { return; }
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) { return; }
    var key = event.key;
    if (key === 'j' || key === 'ArrowRight') { step(1); }
    else if (key === 'k' || key === 'ArrowLeft') { step(-1); }
    else if ((key === 'a' || key === 'r') && current) {
      var button = current.querySelector('button[data-action="' + (key === 'a' ? 'approve' : 'reject') + '"]');
      if (!button) { return; }
      button.click();
    } else if (key === 'n' && current) {
      var note = current.querySelector('textarea[name="note"]');
      if (!note) { return; }
      note.focus();
      note.setSelectionRange(note.value.length, note.value.length);
    } else if (key === ' ' && current) { playRow(current.closest('tr')); }
    else { return; }
    event.preventDefault();
  });

  // ---- a row in sync: every video seeks to one timecode, then all start together
  function cue(video, at) {
    return new Promise(function (resolve) {
      var done = false;
      function finish() { if (!done) { done = true; resolve(); } }
      function ready() {
        if (video.readyState >= 3) { finish(); } else { video.addEventListener('canplay', finish, { once: true }); }
      }
      function seek() {
        var end = isFinite(video.duration) ? Math.max(0, video.duration - 0.05) : at;
        video.addEventListener('seeked', ready, { once: true });
        video.currentTime = Math.min(at, end);
      }
      video.addEventListener('error', finish, { once: true });
      setTimeout(finish, 8000);
      arm(video);
      if (video.readyState >= 1) { seek(); return; }
      video.addEventListener('loadedmetadata', seek, { once: true });
      video.preload = 'auto';
      video.load();
    });
  }
  function playRow(row) {
    if (!row) { return; }
    var videos = all('.take:not([hidden]) video', row);
    if (!videos.length) { return; }
    if (videos.some(function (v) { return !v.paused; })) {
      videos.forEach(function (v) { v.pause(); });
      return;
    }
    all('#sheet video').forEach(function (v) { if (videos.indexOf(v) < 0 && !v.paused) { v.pause(); } });
    var lead = (current && row.contains(current) && current.querySelector('video')) || videos[0];
    var at = lead.currentTime || 0;
    Promise.all(videos.map(function (v) { delete v.dataset.preview; v.muted = v !== lead || v.muted; return cue(v, at); })).then(function () {
      videos.forEach(function (v) { v.play().catch(function () {}); });
    });
  }

  // ---- hovering a clip previews it muted; leaving stops the preview (not a clip the user started)
  doc.addEventListener('mouseover', function (event) {
    var video = event.target;
    if (video.tagName !== 'VIDEO' || !video.paused) { return; }
    arm(video);
    video.dataset.preview = '1';
    video.muted = true;
    video.play().catch(function () {});
  });
  doc.addEventListener('mouseout', function (event) {
    var video = event.target;
    if (video.tagName === 'VIDEO' && video.dataset.preview === '1') { video.pause(); delete video.dataset.preview; }
  });

  function refresh() { observe(); apply(); }
  window.mvbatchSheet = { refresh: refresh };
  refresh();
})();
