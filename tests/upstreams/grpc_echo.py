"""A gRPC service for tests/grpc.rs, on grpcio (Debian's python3-grpcio),
with no generated code: messages are raw bytes.

    python3 grpc_echo.py serve             # prints "grpc PORT" once it listens
    python3 grpc_echo.py serve CERT KEY    # the same over TLS (PEM files)
    python3 grpc_echo.py call HOST:PORT TOKEN [CALL...]

`serve` answers, under /test.Echo/:
  Unary  one message back: JSON of the request and the metadata the
         gateway added or should have taken away; trailing metadata
         x-trailer: done
  Chat   every message back as it comes (bidirectional streaming)
  Slow   after 3 s
  Fail   NOT_FOUND, "no such thing"

`call` makes each call through the gateway (TOKEN as a bearer token, or
none when it is "-") and prints one JSON line per call: its status code,
details, responses and trailing metadata.
"""
import json
import sys
import time
from concurrent import futures

import grpc


def unary(request, context):
    metadata = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-trailer", "done"),))
    return json.dumps({
        "echo": request.decode(),
        "subject": metadata.get("x-auth-subject"),
        "client_id": metadata.get("x-auth-client-id"),
        "authorization": metadata.get("authorization"),
    }).encode()


def chat(requests, context):
    for request in requests:
        yield request


def slow(request, context):
    time.sleep(3)
    return request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def serve(tls):
    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    if tls:
        cert, key = (open(path, "rb").read() for path in tls)
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"grpc {port}", flush=True)
    server.wait_for_termination()


def outcome(name, call):
    try:
        result = call()
        if isinstance(result, tuple):
            response, state = result
            responses = [response.decode()]
            trailers = dict(state.trailing_metadata() or ())
        else:
            responses = [r.decode() for r in result]
            trailers = dict(result.trailing_metadata() or ())
        code, details = "OK", ""
    except grpc.RpcError as e:
        responses, trailers = [], dict(e.trailing_metadata() or ())
        code, details = e.code().name, e.details()
    print(json.dumps({"call": name, "code": code, "details": details, "responses": responses,
                      "trailers": trailers}), flush=True)


def call(target, token, names):
    metadata = () if token == "-" else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target) as channel:
        unary_call = channel.unary_unary("/test.Echo/Unary")
        chat_call = channel.stream_stream("/test.Echo/Chat")
        slow_call = channel.unary_unary("/test.Echo/Slow")
        fail_call = channel.unary_unary("/test.Echo/Fail")
        calls = {
            "unary": lambda: unary_call.with_call(b"hello", metadata=metadata, timeout=10),
            "chat": lambda: chat_call(iter([b"one", b"two", b"three"]), metadata=metadata, timeout=10),
            # Slow with a deadline it misses, and one it meets.
            "slow": lambda: slow_call.with_call(b"late", metadata=metadata, timeout=0.5),
            "patient": lambda: slow_call.with_call(b"worth it", metadata=metadata, timeout=10),
            "fail": lambda: fail_call.with_call(b"x", metadata=metadata, timeout=10),
        }
        for name in names or ["unary", "chat", "slow", "fail"]:
            outcome(name, calls[name])


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4:])
