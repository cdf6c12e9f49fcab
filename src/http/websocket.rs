//! The little of RFC 6455 a gateway needs to relay a WebSocket it did not
//! open: which request asks for one, whether the upstream's `101` really
//! answers it, where each frame ends in a stream of bytes, and the close
//! frame the gateway sends when it ends the connection itself.
//!
//! Payloads are never decoded or copied: the relay passes bytes through
//! and [`Frames`] follows only the frame headers, which is all it takes to
//! know where a close frame may be put (between two frames; control
//! frames may come between the fragments of a message, §5.4). Following
//! them also checks them: what is relayed must be WebSocket frames and
//! nothing else. An upstream that answered `101` to a request it never
//! meant to upgrade would otherwise read whatever the client sends next,
//! an HTTP request of the client's own for instance, that no token ever
//! authorised (the "WebSocket smuggling" of reverse proxies that trust
//! any `101`).

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};
use sha1::{Digest as _, Sha1};

use super::has_token;

/// RFC 6455 §1.3: the GUID the accept key is derived with.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether an HTTP/1.1 request asks to become a WebSocket (RFC 6455
/// §4.2.1): `Connection: upgrade` and `Upgrade: websocket`. The rest of the
/// handshake (method, key, version) is [`handshake_problem`]'s.
pub fn asks_for_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket") && has_token(headers, &header::CONNECTION, "upgrade")
}

/// What is wrong with a WebSocket handshake request, if anything: the
/// upstream would refuse it, and a body (which a `GET` handshake never has)
/// would be read by an upstream that switched as its first frames.
pub fn handshake_problem(method: &http::Method, headers: &HeaderMap, body_less: bool) -> Option<&'static str> {
    if method != http::Method::GET {
        return Some("A WebSocket handshake must be a GET request");
    }
    if !body_less {
        return Some("A WebSocket handshake has no body");
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key_ok = match (keys.next(), keys.next()) {
        (Some(key), None) => {
            base64::engine::general_purpose::STANDARD.decode(key.as_bytes()).is_ok_and(|k| k.len() == 16)
        }
        _ => false,
    };
    if !key_ok {
        return Some("A WebSocket handshake needs one Sec-WebSocket-Key of 16 bytes in base64");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Some("A WebSocket handshake needs Sec-WebSocket-Version: 13");
    }
    None
}

/// The `Sec-WebSocket-Accept` that answers `key` (§4.2.2).
pub fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether an upstream's `101` completes the handshake of a request whose
/// key was `key`: it switched to `websocket`, and proved it read the key.
pub fn upstream_switched(headers: &HeaderMap, key: &HeaderValue) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
        && headers.get(header::SEC_WEBSOCKET_ACCEPT).is_some_and(|a| a == accept_key(key.as_bytes()))
}

/// Which end sends the frames [`Frames`] reads: a client masks every
/// frame, a server none (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// Why a stream of bytes is not WebSocket frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("a frame's mask bit is wrong for its sender")]
    Mask,
    #[error("a reserved bit is set, and no extension was agreed")]
    Reserved,
    #[error("an unknown opcode")]
    Opcode,
    #[error("a control frame that is fragmented or longer than 125 bytes")]
    Control,
    #[error("a continuation frame with no message to continue, or a new message inside one")]
    Fragments,
    #[error("a frame length with its most significant bit set")]
    Length,
}

/// Follows one direction's frames as their bytes pass.
#[derive(Debug)]
pub struct Frames {
    sender: Sender,
    /// Extensions (`permessage-deflate`) may use the reserved bits.
    extensions: bool,
    /// The header of the frame being read, when it has not all come.
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A fragmented data message is under way.
    in_message: bool,
    /// A close frame has gone by whole: nothing more may follow it.
    closed: bool,
}

impl Frames {
    pub fn new(sender: Sender, extensions: bool) -> Frames {
        Frames { sender, extensions, head: [0; 14], head_len: 0, payload_left: 0, in_message: false, closed: false }
    }

    /// Whether the bytes so far end exactly between two frames.
    pub fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }

    /// Whether a whole close frame has gone by.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Follows `bytes`, the next of the stream. With `stop_at_boundary`,
    /// stops at the first point where a frame ends and returns how many of
    /// the bytes go before it (all of them if the frame goes on past them);
    /// otherwise returns `bytes.len()`.
    pub fn follow(&mut self, bytes: &[u8], stop_at_boundary: bool) -> Result<usize, Violation> {
        let mut at = 0;
        loop {
            if stop_at_boundary && self.at_boundary() {
                return Ok(at);
            }
            if at == bytes.len() {
                return Ok(at);
            }
            if self.payload_left > 0 {
                let step = self.payload_left.min((bytes.len() - at) as u64);
                self.payload_left -= step;
                at += step as usize;
                continue;
            }
            // A header: take bytes until it is whole.
            let needed = self.head_needed();
            let take = (needed - self.head_len).min(bytes.len() - at);
            self.head[self.head_len..self.head_len + take].copy_from_slice(&bytes[at..at + take]);
            self.head_len += take;
            at += take;
            // The length bytes may say it is longer than first thought.
            if self.head_len == needed && self.head_needed() == needed {
                self.header_done()?;
            }
        }
    }

    /// How long the header being read is, as far as its bytes so far say.
    fn head_needed(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        match self.head[1] & 0x7f {
            126 => 4 + mask,
            127 => 10 + mask,
            _ => 2 + mask,
        }
    }

    fn header_done(&mut self) -> Result<(), Violation> {
        let (b0, b1) = (self.head[0], self.head[1]);
        let (fin, rsv, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f, b1 & 0x80 != 0);
        if masked != (self.sender == Sender::Client) {
            return Err(Violation::Mask);
        }
        if rsv != 0 && !self.extensions {
            return Err(Violation::Reserved);
        }
        let length = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let n = u64::from_be_bytes(self.head[2..10].try_into().unwrap_or([0xff; 8]));
                if n >> 63 != 0 {
                    return Err(Violation::Length);
                }
                n
            }
            n => u64::from(n),
        };
        match opcode {
            // Continuation.
            0 if !self.in_message => return Err(Violation::Fragments),
            0 => self.in_message = !fin,
            // Text and binary.
            1 | 2 if self.in_message => return Err(Violation::Fragments),
            1 | 2 => self.in_message = !fin,
            // Close, ping, pong.
            8..=10 if !fin || length > 125 => return Err(Violation::Control),
            8 => self.closed = true,
            9 | 10 => {}
            _ => return Err(Violation::Opcode),
        }
        self.head_len = 0;
        self.payload_left = length;
        Ok(())
    }
}

/// Close codes the gateway sends (§7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1001: the gateway is shutting down, or the connection idled.
    GoingAway = 1001,
    /// 1002: what came was not WebSocket frames.
    ProtocolError = 1002,
    /// 1008: the token it was opened with expired or was revoked.
    PolicyViolation = 1008,
}

/// A close frame from `sender` with `code` and `reason` (at most 123
/// bytes, cut if longer), masked with `mask` when a client sends it.
pub fn close_frame(sender: Sender, code: CloseCode, reason: &str, mask: [u8; 4]) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&(code as u16).to_be_bytes());
    payload.extend_from_slice(reason);
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x88);
    match sender {
        Sender::Server => {
            frame.push(payload.len() as u8);
            frame.extend_from_slice(&payload);
        }
        Sender::Client => {
            frame.push(0x80 | payload.len() as u8);
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as `sender` would send it: `opcode` with FIN, `len` bytes.
    fn frame(sender: Sender, b0: u8, len: usize) -> Vec<u8> {
        let mut f = vec![b0];
        let mask = if sender == Sender::Client { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(mask | len as u8),
            126..=0xffff => {
                f.push(mask | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if sender == Sender::Client {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn boundaries_are_found_however_the_bytes_are_cut() {
        let mut stream = frame(Sender::Client, 0x81, 5);
        stream.extend(frame(Sender::Client, 0x82, 300));
        stream.extend(frame(Sender::Client, 0x89, 0));
        stream.extend(frame(Sender::Client, 0x82, 70_000));
        let ends = [11, 11 + 308, 11 + 308 + 6, stream.len()];
        for piece in [1, 2, 3, 7, 13, 1000, stream.len()] {
            let mut frames = Frames::new(Sender::Client, false);
            let mut seen = Vec::new();
            let mut at = 0;
            for chunk in stream.chunks(piece) {
                assert_eq!(frames.follow(chunk, false), Ok(chunk.len()));
                at += chunk.len();
                if frames.at_boundary() {
                    seen.push(at);
                }
            }
            assert!(frames.at_boundary(), "piece {piece}");
            assert!(seen.iter().all(|s| ends.contains(s)), "piece {piece}: {seen:?}");
        }
    }

    #[test]
    fn stopping_at_a_boundary_leaves_what_follows() {
        let mut stream = frame(Sender::Server, 0x81, 3);
        stream.extend(frame(Sender::Server, 0x81, 3));
        let mut frames = Frames::new(Sender::Server, false);
        assert_eq!(frames.follow(&stream, true), Ok(0), "between frames already");
        assert_eq!(frames.follow(&stream[..2], false), Ok(2));
        assert_eq!(frames.follow(&stream[2..], true), Ok(3), "the rest of the first frame, no more");
        assert!(frames.at_boundary());
        assert_eq!(frames.follow(&stream[5..], true), Ok(0));
    }

    #[test]
    fn what_is_not_websocket_frames_is_refused() {
        let refused = |sender, bytes: &[u8]| Frames::new(sender, false).follow(bytes, false).unwrap_err();
        // An HTTP request, smuggled after a 101.
        assert_eq!(refused(Sender::Client, b"GET /admin HTTP/1.1\r\n"), Violation::Mask);
        assert_eq!(refused(Sender::Client, &frame(Sender::Server, 0x81, 1)), Violation::Mask);
        assert_eq!(refused(Sender::Server, &frame(Sender::Client, 0x81, 1)), Violation::Mask);
        assert_eq!(refused(Sender::Client, &frame(Sender::Client, 0x83, 1)), Violation::Opcode);
        assert_eq!(refused(Sender::Client, &frame(Sender::Client, 0x80, 1)), Violation::Fragments);
        assert_eq!(refused(Sender::Client, &frame(Sender::Client, 0x09, 1)), Violation::Control);
        assert_eq!(refused(Sender::Client, &frame(Sender::Client, 0x89, 126)), Violation::Control);
        assert_eq!(refused(Sender::Client, &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]), Violation::Length);
        // With an extension agreed, RSV1 is its to use.
        let compressed = frame(Sender::Client, 0xc1, 4);
        assert_eq!(Frames::new(Sender::Client, true).follow(&compressed, false), Ok(compressed.len()));
        assert_eq!(refused(Sender::Client, &compressed), Violation::Reserved);
    }

    #[test]
    fn fragments_and_control_frames_between_them() {
        let mut stream = frame(Sender::Server, 0x01, 2); // text, not final
        stream.extend(frame(Sender::Server, 0x89, 1)); // ping in between
        stream.extend(frame(Sender::Server, 0x80, 2)); // final continuation
        let mut frames = Frames::new(Sender::Server, false);
        assert_eq!(frames.follow(&stream, false), Ok(stream.len()));
        let mut inside = frame(Sender::Server, 0x01, 2);
        inside.extend(frame(Sender::Server, 0x81, 2));
        assert_eq!(Frames::new(Sender::Server, false).follow(&inside, false), Err(Violation::Fragments));
    }

    #[test]
    fn close_frames_are_well_formed_both_ways() {
        let server = close_frame(Sender::Server, CloseCode::PolicyViolation, "token revoked", [0; 4]);
        assert_eq!(&server[..4], &[0x88, 15, 0x03, 0xf0]);
        assert_eq!(&server[4..], b"token revoked");
        let client = close_frame(Sender::Client, CloseCode::GoingAway, "bye", [9, 8, 7, 6]);
        assert_eq!(&client[..6], &[0x88, 0x85, 9, 8, 7, 6]);
        let unmasked: Vec<u8> = client[6..].iter().enumerate().map(|(i, b)| b ^ [9, 8, 7, 6][i % 4]).collect();
        assert_eq!(unmasked, [0x03, 0xe9, b'b', b'y', b'e']);
        let mut frames = Frames::new(Sender::Client, false);
        assert_eq!(frames.follow(&client, false), Ok(client.len()));
        assert!(frames.closed() && frames.at_boundary());
        let long = close_frame(Sender::Server, CloseCode::GoingAway, &"x".repeat(500), [0; 4]);
        assert_eq!(long.len(), 2 + 125, "a control frame's payload is at most 125 bytes");
    }

    #[test]
    fn handshakes() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(asks_for_websocket(&h));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        assert_eq!(handshake_problem(&http::Method::GET, &h, true), None);
        assert!(handshake_problem(&http::Method::POST, &h, true).is_some());
        assert!(handshake_problem(&http::Method::GET, &h, false).is_some());
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(handshake_problem(&http::Method::GET, &h, true).is_some());
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("c2hvcnQ="));
        assert!(handshake_problem(&http::Method::GET, &h, true).is_some());
        h.remove(header::CONNECTION);
        assert!(!asks_for_websocket(&h));

        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut res = HeaderMap::new();
        res.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!upstream_switched(&res, &key), "no proof it read the key");
        res.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(upstream_switched(&res, &key));
        res.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!upstream_switched(&res, &key));
    }
}
