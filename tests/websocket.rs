//! WebSockets through the gateway (RFC 6455), with a real client and a
//! real server on both sides (tokio-tungstenite): the handshake is
//! authorised like any request, the frames are relayed both ways, and the
//! gateway closes the connection itself (1008) when its token is revoked
//! or expires, (1001) when it idles or the gateway stops, and (1002) when
//! what comes is not WebSocket frames. Over HTTP/2 (RFC 8441) the client
//! is the same library on an `h2` stream.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, Method};
use support::{Gateway, config_toml, issuing_jwts, send};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What the WebSocket upstream saw.
#[derive(Debug)]
enum Seen {
    /// A handshake: the request target and the header fields.
    Opened { uri: String, headers: HeaderMap },
    /// A message, as it came.
    Message(Message),
    /// A close frame's code (`None`: no code).
    Closed(Option<u16>),
    /// The connection ended (after a close frame or not).
    Ended,
}

/// A WebSocket server: on `/…/flood` it sends 64 KiB messages as fast as
/// it may (counting the bytes it got out in `flooded`); anywhere else it
/// echoes each message back.
struct WsUpstream {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    flooded: Arc<AtomicU64>,
}

impl WsUpstream {
    async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, seen) = mpsc::unbounded_channel();
        let flooded = Arc::new(AtomicU64::new(0));
        let counter = flooded.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, counter) = (tx.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut path = String::new();
                    // The library's own callback type, with its large error.
                    #[allow(clippy::result_large_err)]
                    let callback = |req: &WsRequest, res: WsResponse| {
                        path = req.uri().path().to_string();
                        let _ = tx.send(Seen::Opened { uri: req.uri().to_string(), headers: req.headers().clone() });
                        Ok(res)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                    if path.ends_with("/flood") {
                        let chunk = Message::Binary(vec![7u8; 64 * 1024].into());
                        while ws.send(chunk.clone()).await.is_ok() {
                            counter.fetch_add(64 * 1024, Ordering::SeqCst);
                        }
                    } else {
                        while let Some(Ok(message)) = ws.next().await {
                            match &message {
                                Message::Close(frame) => {
                                    let _ = tx.send(Seen::Closed(frame.as_ref().map(|f| u16::from(f.code))));
                                }
                                Message::Text(_) | Message::Binary(_) => {
                                    let _ = tx.send(Seen::Message(message.clone()));
                                    if ws.send(message).await.is_err() {
                                        break;
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    let _ = tx.send(Seen::Ended);
                });
            }
        });
        WsUpstream { addr, seen, flooded }
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("the upstream saw something in time")
            .expect("the upstream runs")
    }

    /// The next handshake's target and fields.
    async fn opened(&mut self) -> (String, HeaderMap) {
        match self.next().await {
            Seen::Opened { uri, headers } => (uri, headers),
            other => panic!("expected a handshake, saw {other:?}"),
        }
    }

    /// Whether nothing at all reached it.
    fn saw_nothing(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}

/// The standard configuration plus WebSocket routes to `ws`, its access
/// tokens living `ttl`.
fn config(ws: SocketAddr, ttl: &str) -> String {
    let routes = format!(
        r#"
[[routes]]
name = "ws"
path_prefix = "/ws/"
upstream = "http://{ws}"
[routes.scopes]
GET = ["calendar.read"]

[[routes]]
name = "ws-admin"
path_prefix = "/ws-admin/"
upstream = "http://{ws}"
[routes.scopes]
GET = ["admin"]

[[routes]]
name = "no-ws"
path_prefix = "/no-ws/"
upstream = "http://{ws}"
websockets = false
[routes.scopes]
GET = ["calendar.read"]

[[routes]]
name = "ws-idle"
path_prefix = "/ws-idle/"
upstream = "http://{ws}"
idle_timeout = "1s"
[routes.scopes]
GET = ["calendar.read"]

[[routes]]
name = "ws-public"
path_prefix = "/ws-public/"
upstream = "http://{ws}"
public = true
"#
    );
    config_toml(ws, &routes).replace("access_token_ttl = \"15m\"", &format!("access_token_ttl = \"{ttl}\""))
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket to `path` on `gw`, with `token` in the `Authorization`
/// field (when given).
async fn connect(gw: &Gateway, path: &str, token: Option<&str>) -> Result<Client, tungstenite::Error> {
    let mut request = format!("ws://{}{path}", gw.public).into_client_request().expect("request");
    if let Some(token) = token {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("value"));
    }
    let connecting = tokio_tungstenite::connect_async(request);
    let (ws, _) = tokio::time::timeout(Duration::from_secs(10), connecting).await.expect("an answer in time")?;
    Ok(ws)
}

/// The next message the client gets (pings and pongs skipped).
async fn receive<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("the connection is open")
            .expect("a frame");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

/// The close frame the client gets next, and when.
async fn closed<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> (CloseFrame, Instant) {
    match receive(ws).await {
        Message::Close(Some(frame)) => (frame, Instant::now()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A WebSocket to `path` on `gw` over HTTP/2 (RFC 8441's extended
/// `CONNECT`, on an h2c connection), with `token` in `Authorization`, or
/// the status it was refused with. The stream's bytes are pumped to and
/// from a pipe whose other end is tungstenite's client.
async fn connect_h2(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
) -> Result<WebSocketStream<DuplexStream>, http::StatusCode> {
    let tcp = TcpStream::connect(gw.public).await.expect("connect");
    let (h2, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    // The server's SETTINGS come before its first answer.
    let mut h2 = h2.ready().await.expect("ready");
    let (first, _) = h2.send_request(http::Request::get(gw.url("/")).body(()).expect("request"), true).expect("send");
    first.await.expect("an answer");
    assert!(h2.is_extended_connect_protocol_enabled(), "SETTINGS_ENABLE_CONNECT_PROTOCOL");

    let mut req =
        http::Request::builder().method(Method::CONNECT).uri(gw.url(path)).header("sec-websocket-version", "13");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let mut req = req.body(()).expect("request");
    req.extensions_mut().insert(h2::ext::Protocol::from("websocket"));
    let (response, mut to_gateway) = h2.send_request(req, false).expect("send");
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.expect("in time").expect("an answer");
    if response.status() != http::StatusCode::OK {
        return Err(response.status());
    }
    assert!(response.headers().get("sec-websocket-accept").is_none(), "no key to answer over HTTP/2");
    let mut from_gateway = response.into_body();
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (mut far_read, mut far_write) = tokio::io::split(far);
    tokio::spawn(async move {
        let _h2 = h2;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match far_read.read(&mut buf).await {
                Ok(0) | Err(_) => return drop(to_gateway.send_data(bytes::Bytes::new(), true)),
                Ok(n) => {
                    if to_gateway.send_data(bytes::Bytes::copy_from_slice(&buf[..n]), false).is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(data)) = from_gateway.data().await {
            let _ = from_gateway.flow_control().release_capacity(data.len());
            if far_write.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = far_write.shutdown().await;
    });
    Ok(WebSocketStream::from_raw_socket(near, tungstenite::protocol::Role::Client, None).await)
}

/// A raw handshake for `path`: the fields, without the blank line.
fn handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}"
    )
}

#[tokio::test]
async fn messages_go_both_ways_with_the_gateways_identity_and_without_the_token() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;
    let token = gw.token("app", "calendar.read").await;

    // In the query, as a browser's page sends it.
    let mut ws = connect(&gw, &format!("/ws/chat?room=1&access_token={token}"), None).await.expect("upgraded");
    let (uri, headers) = upstream.opened().await;
    assert_eq!(uri, "/ws/chat?room=1", "the token is taken out of the query");
    assert_eq!(headers.get("x-auth-client-id").map(|v| v.to_str().unwrap()), Some("app"));
    assert_eq!(headers.get("x-auth-scope").map(|v| v.to_str().unwrap()), Some("calendar.read"));
    assert!(headers.get("authorization").is_none());
    assert_eq!(headers.get("upgrade").map(|v| v.to_str().unwrap()), Some("websocket"));

    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(receive(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.expect("send");
    assert_eq!(receive(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));
    assert!(matches!(upstream.next().await, Seen::Message(m) if m == Message::text("hello")));
    assert!(matches!(upstream.next().await, Seen::Message(_)));
    assert_eq!(gw.counter("portcullis_websockets_open{route=\"ws\"}").await, 1);

    // The client's closing handshake reaches the upstream, whose answer
    // reaches the client.
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() })).await.expect("close");
    let (frame, _) = closed(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Normal);
    assert!(matches!(upstream.next().await, Seen::Closed(Some(1000))));
    assert!(matches!(upstream.next().await, Seen::Ended));
    wait_for_series(&gw, "portcullis_websockets_closed_total{reason=\"client\",route=\"ws\"}", 1).await;
    assert_eq!(gw.counter("portcullis_websockets_open{route=\"ws\"}").await, 0);
    assert_eq!(gw.counter("portcullis_websockets_total{route=\"ws\"}").await, 1);
    gw.stop().await;
}

/// The metrics and the log are written as the tunnel ends, a moment after
/// the peers see it end: waited for, not slept on.
async fn wait_for_series(gw: &Gateway, series: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = gw.counter(series).await;
        if now == value {
            return;
        }
        if Instant::now() > deadline {
            let metrics = support::get(&gw.admin_url("/metrics"), &[]).await.text();
            let websockets: Vec<&str> = metrics.lines().filter(|l| l.starts_with("portcullis_websockets")).collect();
            panic!("{series} is {now}, not {value}: {websockets:#?}");
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_handshake_without_a_token_or_scope_is_refused_before_anything_reaches_the_upstream() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;

    let reply = support::raw_request(&gw, &handshake("/ws/chat", ""), "").await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"portcullis\""));
    assert!(reply.header("upgrade").is_none());

    let token = gw.token("other", "calendar.read").await;
    let reply =
        support::raw_request(&gw, &handshake("/ws-admin/chat", &format!("Authorization: Bearer {token}\r\n")), "")
            .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.header("www-authenticate").is_some_and(|c| c.contains("insufficient_scope")), "{reply:?}");

    let reply = support::raw_request(&gw, &handshake("/ws/chat", "Authorization: Bearer not-a-token\r\n"), "").await;
    assert_eq!(reply.status, 401, "{reply:?}");

    // A client library sees the refusal as a failed handshake.
    match connect(&gw, "/ws/chat", None).await {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn a_route_can_forbid_websockets_and_a_bad_handshake_is_refused() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;
    let token = gw.token("app", "calendar.read").await;
    let auth = format!("Authorization: Bearer {token}\r\n");

    let reply = support::raw_request(&gw, &handshake("/no-ws/chat", &auth), "").await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["error"], "forbidden");
    assert!(reply.header("www-authenticate").is_none(), "not a matter of the token");

    let version_8 = handshake("/ws/chat", &auth).replace("Version: 13", "Version: 8");
    let reply = support::raw_request(&gw, &version_8, "").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.json()["error_description"].as_str().unwrap().contains("Sec-WebSocket-Version: 13"));

    // A handshake with a body: its bytes would be read as frames.
    let with_body = format!("{}Content-Length: 5\r\n", handshake("/ws/chat", &auth));
    let reply = support::raw_request(&gw, &with_body, "hello").await;
    assert_eq!(reply.status, 400, "{reply:?}");

    // The route's methods come first: this one allows GET alone.
    let post = handshake("/ws/chat", &auth).replacen("GET", "POST", 1);
    let reply = support::raw_request(&gw, &post, "").await;
    assert_eq!(reply.status, 405, "{reply:?}");
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

/// RFC 8441: a WebSocket over HTTP/2 is a `CONNECT` stream, authorised as
/// a handshake is, relayed to the upstream as HTTP/1.1's, and closed by
/// the gateway as any WebSocket is.
#[tokio::test]
async fn a_websocket_over_http2_is_authorised_relayed_and_closed_on_revocation() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;
    assert_eq!(connect_h2(&gw, "/ws/chat", None).await.err(), Some(http::StatusCode::UNAUTHORIZED));
    let weak = gw.token("app", "admin").await;
    assert_eq!(connect_h2(&gw, "/ws/chat", Some(&weak)).await.err(), Some(http::StatusCode::FORBIDDEN));
    let token = gw.token("app", "calendar.read").await;
    assert_eq!(connect_h2(&gw, "/no-ws/chat", Some(&token)).await.err(), Some(http::StatusCode::FORBIDDEN));
    assert!(upstream.saw_nothing(), "nothing refused reached the upstream");

    let mut ws = connect_h2(&gw, "/ws/chat?room=2", Some(&token)).await.expect("opened");
    let (uri, headers) = upstream.opened().await;
    assert_eq!(uri, "/ws/chat?room=2");
    assert_eq!(headers.get("x-auth-client-id").map(|v| v.to_str().unwrap()), Some("app"));
    assert!(headers.get("authorization").is_none());
    assert_eq!(headers.get("upgrade").map(|v| v.to_str().unwrap()), Some("websocket"));
    ws.send(Message::text("over h2")).await.expect("send");
    assert_eq!(receive(&mut ws).await, Message::text("over h2"));

    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("app:app-secret"));
    let form = format!("token={token}");
    let headers = [("content-type", "application/x-www-form-urlencoded"), ("authorization", basic.as_str())];
    let reply = send(Method::POST, &gw.url("/oauth/revoke"), &headers, form).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (frame, _) = closed(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason, "token revoked");
    wait_for_series(&gw, "portcullis_websockets_closed_total{reason=\"revoked\",route=\"ws\"}", 1).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_revoked_token_closes_its_websocket_with_1008_within_a_second() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;
    let token = gw.token("app", "calendar.read").await;
    let other = gw.token("app", "calendar.read").await;
    let mut ws = connect(&gw, "/ws/chat", Some(&token)).await.expect("upgraded");
    let mut kept = connect(&gw, "/ws/chat", Some(&other)).await.expect("upgraded");
    upstream.opened().await;
    upstream.opened().await;
    ws.send(Message::text("before")).await.expect("send");
    assert_eq!(receive(&mut ws).await, Message::text("before"));
    assert!(matches!(upstream.next().await, Seen::Message(_)));

    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("app:app-secret"));
    let revoked_at = Instant::now();
    let reply = send(
        Method::POST,
        &gw.url("/oauth/revoke"),
        &[("content-type", "application/x-www-form-urlencoded"), ("authorization", &basic)],
        format!("token={token}"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let (frame, at) = closed(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason, "token revoked");
    let took = at - revoked_at;
    assert!(took < Duration::from_secs(1), "closed {took:?} after the revocation");
    // The upstream is told the same, as a client would tell it.
    assert!(matches!(upstream.next().await, Seen::Closed(Some(1008))));
    assert!(matches!(upstream.next().await, Seen::Ended));
    wait_for_series(&gw, "portcullis_websockets_closed_total{reason=\"revoked\",route=\"ws\"}", 1).await;

    // The other token's connection is untouched.
    kept.send(Message::text("still here")).await.expect("send");
    assert_eq!(receive(&mut kept).await, Message::text("still here"));
    gw.stop().await;
}

#[tokio::test]
async fn an_expiring_token_closes_its_websocket_with_1008_at_its_exp() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&issuing_jwts(&config(upstream.addr, "2s"))).await;
    let token = gw.token("app", "calendar.read").await;
    let mut ws = connect(&gw, "/ws/chat", Some(&token)).await.expect("upgraded");
    upstream.opened().await;

    let (frame, _) = closed(&mut ws).await;
    let closed_at = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason, "token expired");
    let exp = Duration::from_secs(exp_of(&token));
    assert!(closed_at >= exp, "closed {:?} before exp", exp - closed_at);
    assert!(closed_at - exp < Duration::from_secs(1), "closed {:?} after exp", closed_at - exp);
    assert!(matches!(upstream.next().await, Seen::Closed(Some(1008))));
    wait_for_series(&gw, "portcullis_websockets_closed_total{reason=\"expired\",route=\"ws\"}", 1).await;
    gw.stop().await;
}

/// The `exp` claim of a JWT.
fn exp_of(jwt: &str) -> u64 {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64"))
            .expect("JSON");
    claims["exp"].as_u64().expect("exp")
}

#[tokio::test]
async fn a_large_message_goes_through_whole_both_ways() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;
    let token = gw.token("app", "calendar.read").await;
    let mut ws = connect(&gw, "/ws/chat", Some(&token)).await.expect("upgraded");
    upstream.opened().await;

    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.expect("send");
    match receive(&mut ws).await {
        Message::Binary(echoed) => assert!(echoed[..] == big[..], "the echo differs"),
        other => panic!("expected the echo, got {other:?}"),
    }
    let bytes_to_upstream = gw.counter("portcullis_request_body_bytes_total{route=\"ws\"}").await;
    // The payload, its header and mask.
    assert_eq!(bytes_to_upstream, big.len() as u64 + 14);
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_the_upstream_back_and_is_closed_when_idle() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;
    let token = gw.token("app", "calendar.read").await;
    // This client never reads.
    let stalled = connect(&gw, "/ws-idle/flood", Some(&token)).await.expect("upgraded");
    upstream.opened().await;

    // Meanwhile another client is served.
    let mut ws = connect(&gw, "/ws/chat", Some(&token)).await.expect("upgraded");
    upstream.opened().await;
    ws.send(Message::text("served")).await.expect("send");
    assert_eq!(receive(&mut ws).await, Message::text("served"));

    // Once nothing has moved for the route's idle timeout, the gateway
    // gives up on the stalled client, and the upstream's send fails.
    loop {
        match upstream.next().await {
            Seen::Ended => break,
            Seen::Message(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let flooded = upstream.flooded.load(Ordering::SeqCst);
    // What socket buffers and the gateway's 16 KiB hold, not the flood.
    assert!(flooded < 32 * 1024 * 1024, "the upstream got {flooded} bytes out");
    wait_for_series(&gw, "portcullis_websockets_closed_total{reason=\"idle\",route=\"ws-idle\"}", 1).await;
    drop(stalled);
    gw.stop().await;
}

#[tokio::test]
async fn an_idle_websocket_is_closed_with_1001() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;
    let token = gw.token("app", "calendar.read").await;
    let mut ws = connect(&gw, "/ws-idle/chat", Some(&token)).await.expect("upgraded");
    upstream.opened().await;
    let opened = Instant::now();
    let (frame, at) = closed(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason, "idle timeout");
    assert!(at - opened >= Duration::from_secs(1), "closed after {:?}", at - opened);
    assert!(matches!(upstream.next().await, Seen::Closed(Some(1001))));
    gw.stop().await;
}

#[tokio::test]
async fn stopping_the_gateway_closes_its_websockets_with_1001() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;
    let mut ws = connect(&gw, "/ws-public/chat", None).await.expect("upgraded");
    upstream.opened().await;
    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(receive(&mut ws).await, Message::text("hi"));
    let stopping = tokio::spawn(gw.stop());
    let (frame, _) = closed(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason, "gateway shutting down");
    tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("the gateway stops").expect("stop");
}

/// After the switch only WebSocket frames pass: an HTTP request sent down
/// the tunnel (which the upstream would read as one if it had answered
/// `101` to a request it never meant to upgrade) ends it with 1002.
#[tokio::test]
async fn what_is_not_websocket_frames_ends_the_tunnel_with_1002() {
    let mut upstream = WsUpstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, "15m")).await;
    let token = gw.token("app", "calendar.read").await;
    let mut tcp = TcpStream::connect(gw.public).await.expect("connect");
    let head = format!("{}Authorization: Bearer {token}\r\n\r\n", handshake("/ws/chat", ""));
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n =
            tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("in time").expect("read");
        assert!(n > 0, "closed before the 101: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{text}");
    upstream.opened().await;

    tcp.write_all(b"GET /admin/users HTTP/1.1\r\nHost: internal\r\n\r\n").await.expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert_eq!(&rest[..4], &[0x88, 0x02, 0x03, 0xea], "a close frame with 1002: {rest:?}");
    assert!(matches!(upstream.next().await, Seen::Closed(Some(1002))));
    assert!(matches!(upstream.next().await, Seen::Ended), "nothing but the close reached it");
    wait_for_series(&gw, "portcullis_websockets_closed_total{reason=\"protocol_error\",route=\"ws\"}", 1).await;
    gw.stop().await;
}

/// An upstream answer to a handshake that is not a `101` completing it.
async fn answering(answer: &'static [u8]) -> SocketAddr {
    let (addr, _) = support::tcp::serve(move |mut stream, _| async move {
        let mut got = Vec::new();
        if !support::tcp::read_head(&mut stream, &mut got).await {
            return;
        }
        let _ = stream.write_all(answer).await;
        // Whatever comes next is not read as a request.
        let _ = stream.read_to_end(&mut got).await;
    })
    .await;
    addr
}

#[tokio::test]
async fn only_a_101_that_completes_the_handshake_opens_a_tunnel() {
    // A 101 that does not prove the upstream read the key.
    let bad = answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n").await;
    let gw = Gateway::start(&config(bad, "15m")).await;
    let reply = support::raw_request(&gw, &handshake("/ws-public/chat", ""), "").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.json()["error"], "bad_gateway");
    gw.stop().await;

    // An upstream's refusal is relayed as it is.
    let refusing =
        answering(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 4\r\n\r\nnope").await;
    let gw = Gateway::start(&config(refusing, "15m")).await;
    let reply = support::raw_request(&gw, &handshake("/ws-public/chat", ""), "").await;
    assert_eq!(reply.status, 426, "{reply:?}");
    assert_eq!(reply.body, "nope");
    gw.stop().await;
}
