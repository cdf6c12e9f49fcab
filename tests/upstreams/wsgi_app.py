"""A WSGI app on Python's reference server (wsgiref), as a Python API
behind Portcullis would run: one server per gateway route named on the
command line, each on a loopback port the kernel picks and prints as
"<route> <port>" once it listens.

Its router does what WSGI frameworks do: it reads PATH_INFO, which the
server has percent-decoded (PEP 3333), and matches the first segment
against the route names ("root" takes the rest); it upper-cases the
method, as frameworks do before dispatching. Its answer's first line is
"route=<route> location=<location> path=<PATH_INFO>"; the second is a
JSON object of the method and the HTTP_* variables it was handed, the
headers as the app sees them.
"""

import json
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def app_for(route, locations):
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        first = path.split("/")[1] if path.count("/") >= 1 else ""
        location = first if first in locations else "root"
        seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        seen["REQUEST_METHOD"] = environ["REQUEST_METHOD"].upper()
        body = f"route={route} location={location} path={path}\n{json.dumps(seen, sort_keys=True)}\n"
        data = body.encode("utf-8", "surrogateescape")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
        return [data]

    return app


def main():
    routes = sys.argv[1:]
    locations = set(r for r in routes if r != "root")
    servers = []
    for route in routes:
        server = make_server("127.0.0.1", 0, app_for(route, locations), WSGIServer, QuietHandler)
        servers.append(server)
        print(route, server.server_port, flush=True)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
