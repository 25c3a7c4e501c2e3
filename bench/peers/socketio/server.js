// The socket.io 4.8 peer for herald-bench: the same minimal surface as Herald (subscribe with ack, HTTP publish).
// Run: npm ci && SERVER_CMD="node bench/peers/socketio/server.js" bench/run-fanout.sh
const http = require('http');
const { Server } = require('socket.io');
const srv = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/api/publish') {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      let m;
      try { m = JSON.parse(body); } catch { res.writeHead(400); return res.end('{"error":{"code":"invalid_json"}}'); }
      const evs = m.events || [m];
      for (const e of evs) io.to(e.channel).emit(e.event, e.data);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ results: evs.map((e) => ({ channel: e.channel, offset: 0, epoch: 'x' })) }));
    });
  } else if (!req.url.startsWith('/socket.io/')) { res.writeHead(404); res.end(); }
});
const io = new Server(srv, { transports: ['websocket'] });
io.on('connection', (socket) => {
  socket.on('subscribe', ({ channel }, ack) => { socket.join(channel); ack({ ok: true, channel, offset: 0, epoch: 'x' }); });
});
srv.listen(+(process.env.PORT || 0), '127.0.0.1', () => console.log(`herald listening on http://127.0.0.1:${srv.address().port}`));
