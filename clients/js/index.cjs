'use strict';
// herald-recovery: lets a stock pusher-js client resume Herald history channels after a
// reconnect, so it gets the events it missed (in order, once) instead of silently losing them.
//
// Herald stamps every event of a history channel with a top-level `position` ({epoch, offset})
// for connections that sent `herald:positions`, and answers a `pusher:subscribe` carrying the
// last position a client saw with the events it missed. pusher-js decodes frames into {event,
// channel, data, user_id} only, so `position` never reaches its API: the plugin reads it from
// the raw frame text on the transport, and adds it to the re-subscribes pusher-js sends by
// itself after every reconnect. This file is the only copy of the logic; index.mjs re-exports
// it for ES modules.

// Marks an instance the plugin is installed on, so installing twice does nothing.
const INSTALLED = Symbol.for('herald-recovery');

function isPosition(p) {
  return p !== null && typeof p === 'object' && typeof p.epoch === 'string' &&
    typeof p.offset === 'number' && p.offset >= 0 && Math.floor(p.offset) === p.offset;
}

/**
 * Installs the plugin on a pusher-js instance and returns that same instance.
 * Calling it again on the same instance does nothing.
 */
function withRecovery(pusher) {
  if (!pusher || !pusher.connection || typeof pusher.send_event !== 'function' ||
      typeof pusher.unsubscribe !== 'function') {
    throw new TypeError('withRecovery expects a pusher-js instance');
  }
  if (pusher[INSTALLED]) return pusher;
  Object.defineProperty(pusher, INSTALLED, { value: true });

  // channel name -> the last position this client has of it ({epoch, offset}).
  const positions = new Map();
  // Channels whose last subscribe asked to resume, until the server's verdict. The value is
  // the position `subscription_succeeded` reported (null before it arrives): it is the
  // channel's position *after* the replay that follows, so taking it before the replay has
  // arrived would skip the replayed events if the connection dropped in between.
  const resuming = new Map();

  function remember(channel, p, replace) {
    const have = positions.get(channel);
    // A new epoch means a new stream (Redis lost it, or it expired): offsets of the old one
    // mean nothing there, so the newer stream's position wins whatever its offset.
    if (replace || !have || have.epoch !== p.epoch || p.offset > have.offset) {
      positions.set(channel, { epoch: p.epoch, offset: p.offset });
    }
  }

  function forget(channel) {
    positions.delete(channel);
    resuming.delete(channel);
  }

  // Every subscribe goes through pusher.send_event: Channel.subscribe() calls it on the
  // instance, so an own property here sees the first subscribe and pusher-js's re-subscribes.
  const sendEvent = pusher.send_event;
  pusher.send_event = function (name, data, channel) {
    const target = data && typeof data.channel === 'string' ? data.channel : null;
    if (name === 'pusher:subscribe' && target !== null) {
      prepare();
      const at = positions.get(target);
      if (at) {
        // A copy: the caller's object is left as it made it.
        data = Object.assign({}, data, { position: { epoch: at.epoch, offset: at.offset } });
        resuming.set(target, null);
      } else {
        resuming.delete(target);
      }
    } else if (name === 'pusher:unsubscribe' && target !== null) {
      forget(target);
    }
    return sendEvent.call(pusher, name, data, channel);
  };

  // pusher.unsubscribe does not always send pusher:unsubscribe (not while the subscribe is
  // pending, nor when disconnected), yet the application has left the channel: a later
  // subscribe to it is a new one and must not resume the old subscription.
  const unsubscribe = pusher.unsubscribe;
  pusher.unsubscribe = function (channelName) {
    forget(channelName);
    return unsubscribe.call(pusher, channelName);
  };

  function onFrame(messageEvent) {
    const text = messageEvent && messageEvent.data;
    // Most frames have neither: skip them without parsing them a second time. A `"position"`
    // inside an event's data is escaped (`\"position\"`), so it does not match.
    if (typeof text !== 'string' ||
        (text.indexOf('"position"') === -1 && text.indexOf('"herald:recovery"') === -1)) {
      return;
    }
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      return; // pusher-js reports malformed frames itself
    }
    if (!msg || typeof msg.channel !== 'string') return;
    const channel = msg.channel;
    // This listener runs after pusher-js has handled the frame, so an event handler may have
    // left the channel already: recording the frame's position would resurrect it.
    if (!pusher.channel(channel)) return;

    if (msg.event === 'herald:recovery') {
      let verdict = msg.data;
      try {
        if (typeof verdict === 'string') verdict = JSON.parse(verdict);
      } catch (e) {
        return;
      }
      // On an encrypted channel pusher-js drops every event whose data is not ciphertext, and
      // the server's verdict is plain JSON: without this, the application never sees it there.
      // Emitted now, the verdict still comes before the replayed events, as elsewhere.
      if (channel.indexOf('private-encrypted-') === 0) {
        pusher.channel(channel).emit('herald:recovery', verdict);
      }
      if (!resuming.has(channel)) return;
      const top = resuming.get(channel);
      resuming.delete(channel);
      // Not recovered: the client now starts from the channel's current position (the
      // application is expected to reload its state), whatever it had before. Recovered:
      // the replayed events that follow carry their own positions.
      if (verdict && verdict.recovered === false && isPosition(top)) {
        remember(channel, top, true);
      }
      return;
    }

    if (!isPosition(msg.position)) return;
    if (msg.event === 'pusher_internal:subscription_succeeded' && resuming.has(channel)) {
      resuming.set(channel, msg.position);
    } else {
      remember(channel, msg.position, false);
    }
  }

  // Each (re)connection is a new protocol Connection on a new transport, and the server keeps
  // positions off the frames of a connection until it asks. So before the first subscribe on a
  // connection (pusher-js re-subscribes as soon as it is connected): listen to its raw frames,
  // then ask, so that the answer to that subscribe carries the channel's position already.
  // pusher-js's own listener was bound first: this one sees each frame right after pusher-js
  // has dispatched it.
  let prepared = null;
  function prepare() {
    const connection = pusher.connection.connection;
    const transport = connection && connection.transport;
    if (!transport || connection === prepared) return;
    prepared = connection;
    transport.bind('message', onFrame);
    sendEvent.call(pusher, 'herald:positions', {});
  }

  return pusher;
}

module.exports = { withRecovery };
