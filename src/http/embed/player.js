// The embed player. It follows the call's broadcast state (the relay's SSE stream, else polling the state
// endpoint), plays the relay's playlist with hls.js (or natively where the browser plays HLS itself and hls.js
// is unavailable), and says in words what is going on. `document.body.dataset.state` mirrors it for scripts
// and tests: loading | waiting | playing | ended | failed | error.
(function () {
  'use strict';

  var config = JSON.parse(document.getElementById('embed-config').textContent);
  var video = document.getElementById('video');
  var statusLine = document.getElementById('status');
  var viewersLine = document.getElementById('viewers');

  var POLL_MS = 3000;
  // A proxy that buffers event streams would leave the page waiting forever: poll when no state comes.
  var SSE_PATIENCE_MS = 10000;
  // After the broadcast stops, the viewer is a few seconds behind it: let the tail play out, within bounds.
  var DRAIN_STALL_MS = 8000; // generous: a loaded machine may pause a while before the tail arrives
  var DRAIN_MAX_MS = 30000;
  var RETRY_MIN_MS = 2000;
  var RETRY_MAX_MS = 30000;

  var MESSAGES = {
    loading: 'Loading the broadcast…',
    waiting: 'Waiting for the broadcast to start…',
    ended: 'The broadcast has ended',
    failed: 'The broadcast failed',
    missing: 'This call does not exist',
    unsupported: 'This browser cannot play this broadcast',
    blocked: 'Press play to watch'
  };

  var hls = null;          // the hls.js instance while one plays
  var source = null;       // the playlist URL being played, null when nothing is
  var sawBroadcast = false; // once true, "not broadcasting" means it ended rather than not yet started
  var ending = null;       // 'ended' | 'failed' while the tail of a stopped broadcast plays out
  var drainTimer = null;
  var retryTimer = null;
  var retryDelay = RETRY_MIN_MS;
  var mediaRecoveries = 0;
  var polling = false;
  var events = null;
  var sseAlive = false;
  var endedBy = null;      // how the last broadcast's end was noticed, for tests and debugging

  function show(state, message) {
    document.body.dataset.state = state;
    statusLine.textContent = message || '';
    statusLine.hidden = state === 'playing';
    video.controls = source !== null;
  }

  function teardown() {
    clearInterval(drainTimer);
    drainTimer = null;
    clearTimeout(retryTimer);
    retryTimer = null;
    if (hls) {
      hls.destroy();
      hls = null;
    }
    source = null;
    ending = null;
    if (video.getAttribute('src') !== null) {
      video.removeAttribute('src');
      video.load();
    }
  }

  function useHlsJs() {
    return typeof window.Hls !== 'undefined' && window.Hls.isSupported();
  }

  function start(url) {
    teardown();
    source = url;
    mediaRecoveries = 0;
    show('loading', MESSAGES.loading);
    video.muted = true; // browsers only autoplay muted media; the viewer can unmute
    if (useHlsJs()) {
      document.body.dataset.engine = 'hls.js';
      // lowLatencyMode only takes effect when the playlist is LL-HLS (EXT-X-PART); plain HLS plays as usual.
      hls = new window.Hls({ lowLatencyMode: true, backBufferLength: 30 });
      hls.on(window.Hls.Events.ERROR, onHlsError);
      hls.on(window.Hls.Events.MANIFEST_PARSED, autoplay);
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
      document.body.dataset.engine = 'native';
      video.src = url;
      autoplay();
    } else {
      source = null;
      show('error', MESSAGES.unsupported);
    }
  }

  function autoplay() {
    var attempt = video.play();
    if (attempt && attempt.catch) {
      attempt.catch(function (error) {
        if (error && error.name === 'NotAllowedError' && source !== null) {
          show('loading', MESSAGES.blocked);
        }
      });
    }
  }

  function finish(reason, how) {
    endedBy = how;
    teardown();
    show(reason, MESSAGES[reason]);
  }

  // The broadcast is live at `url`.
  function onLive(url) {
    sawBroadcast = true;
    if (source === url && ending === null && retryTimer === null) {
      return; // already on it
    }
    start(url);
  }

  // The broadcast is not live; `reason` says how it went away ('ended' or 'failed') if it was.
  function onNotLive(reason) {
    if (!sawBroadcast) {
      teardown();
      show('waiting', MESSAGES.waiting);
      return;
    }
    if (source !== null && document.body.dataset.state === 'playing' && !video.paused) {
      if (ending === null) {
        drain(reason);
      } else if (reason === 'failed') {
        ending = reason;
      }
      return;
    }
    var current = document.body.dataset.state;
    if (source === null && (current === 'ended' || current === 'failed')) {
      return; // already said so
    }
    finish(reason, 'state');
  }

  // Keeps playing what the relay still has (its playlists end with EXT-X-ENDLIST), then says it ended: at the
  // `ended` event, when playback stops advancing, or at the latest after DRAIN_MAX_MS.
  function drain(reason) {
    ending = reason;
    var started = Date.now();
    var lastProgress = started;
    var lastTime = video.currentTime;
    drainTimer = setInterval(function () {
      var now = Date.now();
      if (video.currentTime !== lastTime) {
        lastTime = video.currentTime;
        lastProgress = now;
      }
      if (video.ended) {
        finish(ending, 'media-ended');
      } else if (now - lastProgress > DRAIN_STALL_MS) {
        finish(ending, 'stalled');
      } else if (now - started > DRAIN_MAX_MS) {
        finish(ending, 'time-limit');
      }
    }, 500);
  }

  function onHlsError(_event, data) {
    if (!data.fatal) {
      return; // hls.js retries these itself
    }
    if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR && mediaRecoveries < 2) {
      mediaRecoveries += 1;
      hls.recoverMediaError();
      return;
    }
    failPlayback(data.details || data.type);
  }

  function failPlayback(detail) {
    if (ending !== null) {
      finish(ending, 'stream-error'); // the stream went away as announced
      return;
    }
    teardown();
    show('error', 'The broadcast could not be played (' + detail + '). Retrying…');
    retryTimer = setTimeout(retry, retryDelay);
    retryDelay = Math.min(retryDelay * 2, RETRY_MAX_MS);
  }

  // After a playback failure: play again only if the call is still live, asked fresh from the relay.
  function retry() {
    retryTimer = null;
    fetchState().then(function (state) {
      if (state && state.live) {
        start(state.url);
      } else if (state) {
        onNotLive('ended');
      } else {
        failPlayback('the relay did not answer');
      }
    });
  }

  // The call's state from the state endpoint: {live, url}, or null if it could not be read.
  function fetchState() {
    return fetch(config.state, { cache: 'no-store', credentials: 'omit' }).then(function (response) {
      if (response.status === 404) {
        return response.json().then(function (body) {
          if (body && body.error && body.error.code === 'call_not_found') {
            return { missing: true };
          }
          return null;
        });
      }
      if (!response.ok) {
        return null;
      }
      return response.json().then(function (body) {
        var egress = body.call && body.call.egress;
        var live = !!(egress && egress.broadcasting && egress.hls && egress.hls.playlist_url);
        return { live: live, url: live ? egress.hls.playlist_url : null };
      });
    }).catch(function () {
      return null;
    });
  }

  function poll() {
    if (sseAlive && events && events.readyState === 1) {
      polling = false; // the event stream works after all
      return;
    }
    fetchState().then(function (state) {
      if (state && state.missing) {
        teardown();
        show('error', MESSAGES.missing);
      } else if (state && state.live) {
        onLive(state.url);
      } else if (state) {
        onNotLive('ended');
      }
      setTimeout(poll, POLL_MS);
    });
  }

  function startPolling() {
    if (!polling) {
      polling = true;
      poll();
    }
  }

  function listen() {
    if (typeof window.EventSource === 'undefined') {
      startPolling();
      return;
    }
    events = new window.EventSource(config.events);
    var onState = function (reason) {
      return function (message) {
        sseAlive = true;
        var data;
        try {
          data = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        if (data.broadcasting && data.playlist_url) {
          onLive(data.playlist_url);
        } else {
          onNotLive(reason);
        }
      };
    };
    events.addEventListener('state', onState('ended'));
    events.addEventListener('broadcasting_started', onState('ended'));
    events.addEventListener('broadcasting_stopped', onState('ended'));
    events.addEventListener('broadcasting_failed', onState('failed'));
    if (config.viewers) {
      // Counts come with the state stream (when it changes, at most every 5 s): no extra requests.
      events.addEventListener('viewers', function (message) {
        var data;
        try {
          data = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        var now = typeof data.now === 'number' ? data.now : 0;
        viewersLine.textContent = now + ' watching';
        viewersLine.hidden = now < 1;
      });
    }
    // A refused stream (404 for an unknown call, no SSE route behind some proxy) is closed for good; a dropped
    // one reconnects by itself and starts again with a `state` event.
    events.onerror = function () {
      if (events.readyState === 2) {
        startPolling();
      }
    };
    setTimeout(function () {
      if (!sseAlive) {
        startPolling();
      }
    }, SSE_PATIENCE_MS);
  }

  video.addEventListener('playing', function () {
    if (source !== null && ending === null) {
      retryDelay = RETRY_MIN_MS;
      show('playing', '');
    }
  });
  video.addEventListener('ended', function () {
    if (source !== null) {
      finish(ending || 'ended', 'media-ended');
    }
  });
  video.addEventListener('error', function () {
    // With hls.js, its own error events say more; natively this is all there is.
    if (source !== null && hls === null) {
      failPlayback('media error ' + (video.error ? video.error.code : ''));
    }
  });

  // Read by tests and by pages that script the frame (same origin only).
  window.hlsRelayEmbed = {
    get hls() { return hls; },
    get source() { return source; },
    get endedBy() { return endedBy; }
  };

  show('loading', MESSAGES.loading);
  listen();
})();
