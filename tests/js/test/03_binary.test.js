// 3. Binary payloads at the protocol level. Herald only publishes JSON, but a client may send
// BINARY_EVENT packets (Buffer arguments): the server must decode them, answer with an error ack
// `invalid_request`, and keep the connection usable. Run over both transports: over polling the
// attachments travel as base64 `b…` records, over websocket as binary frames.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, connected, subscribeOk, publish, Recorder, chan, withTimeout,
} from '../lib/herald.js';

for (const transport of ['websocket', 'polling']) {
  test(`binary arguments over ${transport}: error ack, connection stays usable`, async (t) => {
    const h = await startHerald(t);
    const socket = await connected(t, h.url, { transports: [transport] });
    const rec = new Recorder(socket);
    const disconnects = [];
    socket.on('disconnect', (reason) => disconnects.push(reason));

    const cases = [
      ['a Buffer as the payload', [Buffer.from([1, 2, 3])]],
      ['a Buffer as the channel', [{ channel: Buffer.from('abc') }]],
      ['a valid object plus a Buffer argument', [{ channel: Buffer.alloc(0) }, Buffer.from([0xff, 0x00])]],
      ['several attachments', [{ channel: [Buffer.from([1]), Buffer.from([2]), Buffer.from([3])] }]],
      ['a 64 KiB Buffer', [Buffer.alloc(64 * 1024, 7)]],
    ];
    for (const [what, args] of cases) {
      const ack = await withTimeout(socket.emitWithAck('subscribe', ...args), 10_000, `ack for subscribe with ${what}`);
      assert.equal(ack?.ok, false, `subscribe with ${what}: ${JSON.stringify(ack)}`);
      assert.equal(ack.error?.code, 'invalid_request', `subscribe with ${what}: ${JSON.stringify(ack)}`);
    }
    // A binary event with an unknown name and no ack must simply be ignored.
    socket.emit('no-such-event', Buffer.from([9, 9, 9]), { nested: Buffer.from('x') });

    // Still the same connection, and it works.
    assert.equal(socket.connected, true);
    const channel = chan('after-binary');
    await subscribeOk(socket, channel);
    await publish(h.url, channel, 'tick', { ok: 1 });
    await rec.until((r) => r.named('tick').length === 1, 10_000, 'tick after binary packets');
    assert.deepEqual(rec.named('tick')[0].args[0], { ok: 1 });
    assert.deepEqual(disconnects, [], 'the connection was never dropped');
    assert.equal(socket.io.engine.transport.name, transport);
    await h.assertHealthy();
  });
}
