// An Express 4 app, as a Node API behind Portcullis would run: one server
// per gateway route named on the command line, each on a loopback port the
// kernel picks, printed as "<route> <port>" once all listen.
//
// Each route name other than "root" is also an Express route, "/<name>" and
// "/<name>/*"; "root" takes the rest. Express matches them as it does by
// default: without regard to letter case (`caseSensitive: false`), so the
// app's routing, not the test's, picks the location. The answer is
// "route=<route> location=<location> path=<req.path>".
//
// express comes from tests/upstreams/node_modules (`npm ci --prefix
// tests/upstreams`, which .ci/run does).

const express = require('express');
const http = require('http');

const routes = process.argv.slice(2);
const locations = routes.filter((r) => r !== 'root');
const ports = [];
let listening = 0;
routes.forEach((route, i) => {
  const app = express();
  for (const location of locations) {
    app.all([`/${location}`, `/${location}/*`], (req, res) => {
      res.type('text/plain').send(`route=${route} location=${location} path=${req.path}\n`);
    });
  }
  app.all('*', (req, res) => res.type('text/plain').send(`route=${route} location=root path=${req.path}\n`));
  const server = http.createServer(app).listen(0, '127.0.0.1', () => {
    ports[i] = `${route} ${server.address().port}`;
    listening += 1;
    if (listening === routes.length) {
      process.stdout.write(ports.join('\n') + '\n');
    }
  });
});
