//! Request ids and the access log.
//!
//! Every request gets an `X-Request-Id`: the client's when it sent a sane
//! one, a fresh random one otherwise. It goes upstream and back to the
//! client. The access log is one line per request (JSON or text, as the
//! rest of the log) on the `access` target, with the route, the
//! normalised path without its query, status, durations, upstream and the
//! identity the token proved; never the token, never the query.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore as _;

use crate::config::LogFormat;
use crate::telemetry::logging::LogWriter;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whom a request spoke for, as the access log writes it: the client and
/// the subject a token proved (`auth::tokens::Identity` is one). A trait,
/// so the log needs nothing from the room that validates tokens.
pub trait Principal: std::fmt::Debug + Send + Sync {
    fn client_id(&self) -> &str;
    fn subject(&self) -> &str;
}

/// What the gateway learnt about a request, for the access log. It
/// borrows the route's names from the configuration the request ran on.
#[derive(Debug, Clone, Default)]
pub struct AccessInfo<'a> {
    pub route: Option<&'a str>,
    /// The normalised path (no query); as sent, if it was refused before
    /// it could be normalised.
    pub path: Option<String>,
    pub upstream: Option<&'a str>,
    pub upstream_time: Option<Duration>,
    /// Whom the token named (the worker's copy, not a new one).
    pub identity: Option<Arc<dyn Principal>>,
    /// For a WebSocket, logged when it ends: what went each way, and why
    /// it ended.
    pub tunnel: Option<TunnelRecord>,
}

/// What an upgraded connection carried, for its access line.
#[derive(Debug, Clone, Copy)]
pub struct TunnelRecord {
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// `client`, `upstream`, `revoked`, `expired`, `idle`, …
    pub ended: &'static str,
}

/// A client's id is kept if it is 1 to 128 characters of a conservative
/// set (so it can go into logs and headers as is); otherwise a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(v), None) = (sent.next(), sent.next()) {
        let b = v.as_bytes();
        if (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
        {
            return v.clone();
        }
    }
    let mut bytes = [0u8; 16];
    // A thread-local CSPRNG: ids must not collide, and need not be secret.
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut hex = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        hex[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
        hex[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 0xf)];
    }
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Whether access lines are written at all: with the access target
/// filtered out (a `warn` level), a request copies nothing for the log.
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// Where access lines go when the gateway set up its own logging
/// (`crate::telemetry::logging::init`): the main log's writer, and its format.
static SINK: OnceLock<Sink> = OnceLock::new();

struct Sink {
    writer: LogWriter,
    format: LogFormat,
}

/// Sends access lines to `writer` (the main log's), written in `format`.
/// The first call wins.
pub fn set_sink(writer: LogWriter, format: LogFormat) {
    let _ = SINK.set(Sink { writer, format });
}

/// How much a thread batches before it hands its lines to the writer.
const BATCH_BYTES: usize = 16 * 1024;
/// How long a worker's lines may wait in its batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    /// A thread's lines not yet handed over, its handle on the log writer,
    /// and the text of the last second it stamped a line with.
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
}

#[derive(Default)]
struct Batch {
    lines: String,
    writer: Option<LogWriter>,
    stamp: Stamp,
}

impl Batch {
    fn flush(&mut self, sink: &Sink) {
        if self.lines.is_empty() {
            return;
        }
        // A handle per thread: cloning one per batch would count on a
        // reference shared by every worker.
        let writer = self.writer.get_or_insert_with(|| sink.writer.clone());
        let _ = writer.write_all(self.lines.as_bytes());
        self.lines.clear();
    }
}

/// Hands the calling thread's batched lines to the writer. Each worker
/// calls it every [`FLUSH_EVERY`] and when it stops (as nginx's
/// `access_log ... buffer= flush=` does).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        BATCH.with(|cell| cell.borrow_mut().flush(sink));
    }
}

/// One access log line. The caller checks [`enabled`] first, before it
/// copies anything for the line.
///
/// The line is written here, not by `tracing`'s formatter: that one spent
/// a fifth of the gateway's CPU per request (a serde map per event, and a
/// UTF-8 check of every piece it writes), where an access record has
/// fixed fields. The fields, their names and both formats are what a
/// `tracing` event would give; durations are in milliseconds to the
/// microsecond. Lines are batched per thread (see [`flush`]): handing
/// each to the log thread on its own cost a wake-up of that thread, and a
/// write(2), per request.
pub fn log(
    request_id: &HeaderValue,
    method: &http::Method,
    status: http::StatusCode,
    duration: Duration,
    info: &AccessInfo<'_>,
) {
    let record = Record {
        request_id: request_id.to_str().unwrap_or(""),
        method: method.as_str(),
        path: info.path.as_deref().unwrap_or(""),
        status: status.as_u16(),
        duration,
        route: info.route.unwrap_or("(none)"),
        upstream: info.upstream.unwrap_or(""),
        upstream_time: info.upstream_time.unwrap_or(Duration::ZERO),
        client_id: info.identity.as_deref().map_or("", |i| i.client_id()),
        subject: info.identity.as_deref().map_or("", |i| i.subject()),
        tunnel: info.tunnel,
    };
    let Some(sink) = SINK.get() else {
        // Someone else's subscriber (the library embedded): a plain event.
        return record.event();
    };
    BATCH.with(|cell| {
        let batch = &mut *cell.borrow_mut();
        record.write(&mut batch.lines, sink.format, &mut batch.stamp, SystemTime::now());
        if batch.lines.len() >= BATCH_BYTES {
            batch.flush(sink);
        }
    });
}

/// The fields of one access line.
struct Record<'a> {
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration: Duration,
    route: &'a str,
    upstream: &'a str,
    upstream_time: Duration,
    client_id: &'a str,
    subject: &'a str,
    tunnel: Option<TunnelRecord>,
}

impl Record<'_> {
    fn event(&self) {
        tracing::info!(
            target: "access",
            request_id = self.request_id,
            method = self.method,
            path = self.path,
            status = self.status,
            duration_ms = self.duration.as_secs_f64() * 1000.0,
            route = self.route,
            upstream = self.upstream,
            upstream_ms = self.upstream_time.as_secs_f64() * 1000.0,
            client_id = self.client_id,
            subject = self.subject,
            bytes_from_client = self.tunnel.map(|t| t.bytes_from_client),
            bytes_to_client = self.tunnel.map(|t| t.bytes_to_client),
            ended = self.tunnel.map(|t| t.ended),
        );
    }

    /// The line, as `tracing`'s JSON or text format would write it.
    fn write(&self, out: &mut String, format: LogFormat, stamp: &mut Stamp, now: SystemTime) {
        let fields = [
            ("request_id", Value::Text(self.request_id)),
            ("method", Value::Text(self.method)),
            ("path", Value::Text(self.path)),
            ("status", Value::Number(u64::from(self.status))),
            ("duration_ms", Value::Millis(self.duration)),
            ("route", Value::Text(self.route)),
            ("upstream", Value::Text(self.upstream)),
            ("upstream_ms", Value::Millis(self.upstream_time)),
            ("client_id", Value::Text(self.client_id)),
            ("subject", Value::Text(self.subject)),
        ];
        // What goes before each field's name, and between it and its value.
        let (before, between) = match format {
            LogFormat::Json => {
                out.push_str("{\"timestamp\":\"");
                stamp.write(out, now);
                out.push_str("\",\"level\":\"INFO\"");
                (",\"", "\":")
            }
            LogFormat::Text => {
                stamp.write(out, now);
                out.push_str("  INFO access:");
                (" ", "=")
            }
        };
        let tunnel = self.tunnel.map(|t| {
            [
                ("bytes_from_client", Value::Number(t.bytes_from_client)),
                ("bytes_to_client", Value::Number(t.bytes_to_client)),
                ("ended", Value::Text(t.ended)),
            ]
        });
        for (name, value) in fields.into_iter().chain(tunnel.into_iter().flatten()) {
            out.push_str(before);
            out.push_str(name);
            out.push_str(between);
            match value {
                Value::Text(text) => push_quoted(out, text),
                Value::Number(n) => out.push_str(itoa::Buffer::new().format(n)),
                Value::Millis(d) => push_millis(out, d),
            }
        }
        out.push_str(match format {
            LogFormat::Json => ",\"target\":\"access\"}\n",
            LogFormat::Text => "\n",
        });
    }
}

/// A field's value in an access line.
enum Value<'a> {
    /// Quoted and escaped.
    Text(&'a str),
    Number(u64),
    /// Milliseconds with three decimals.
    Millis(Duration),
}

/// `value` in double quotes, with `"`, `\\` and control characters
/// escaped as JSON escapes them: a client-chosen value cannot end the
/// string or the line.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    if !value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f) {
        out.push_str(value);
    } else {
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// Milliseconds with three decimals (to the microsecond).
fn push_millis(out: &mut String, d: Duration) {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    let mut digits = itoa::Buffer::new();
    out.push_str(digits.format(micros / 1000));
    out.push('.');
    let fraction = micros % 1000;
    if fraction < 100 {
        out.push('0');
    }
    if fraction < 10 {
        out.push('0');
    }
    out.push_str(digits.format(fraction));
}

/// RFC 3339 timestamps in UTC to the microsecond, as `tracing` writes
/// them, with the date and time of the current second worked out once per
/// second, not once per line.
#[derive(Default)]
struct Stamp {
    second: u64,
    text: String,
}

impl Stamp {
    fn write(&mut self, out: &mut String, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.text.is_empty() || second != self.second {
            self.second = second;
            self.text = civil_time(second);
        }
        out.push_str(&self.text);
        out.push('.');
        let micros = since.subsec_micros();
        let digits = [100_000, 10_000, 1_000, 100, 10, 1].map(|unit| b'0' + (micros / unit % 10) as u8);
        out.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
        out.push('Z');
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second, in UTC (the days-to-civil
/// algorithm of Howard Hinnant's `chrono`-compatible date library).
fn civil_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let of_day = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", of_day / 3_600, of_day / 60 % 60, of_day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(path: &'a str, subject: &'a str) -> Record<'a> {
        Record {
            request_id: "abc-1",
            method: "GET",
            path,
            status: 200,
            duration: Duration::from_nanos(1_234_567),
            route: "calendar",
            upstream: "http://10.0.0.5:9001",
            upstream_time: Duration::from_micros(1_000_005),
            client_id: "app",
            subject,
            tunnel: None,
        }
    }

    #[test]
    fn a_websocket_line_says_what_went_each_way_and_why_it_ended() {
        let mut line = String::new();
        let mut ws = record("/chat", "alice");
        ws.status = 101;
        ws.tunnel = Some(TunnelRecord { bytes_from_client: 12, bytes_to_client: 3_400, ended: "revoked" });
        ws.write(&mut line, LogFormat::Json, &mut Stamp::default(), moment());
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(parsed["status"], 101);
        assert_eq!(parsed["bytes_from_client"], 12);
        assert_eq!(parsed["bytes_to_client"], 3_400);
        assert_eq!(parsed["ended"], "revoked");
        assert!(line.ends_with(",\"ended\":\"revoked\",\"target\":\"access\"}\n"), "{line}");
    }

    /// 2026-12-03T19:27:14.677576Z
    fn moment() -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(1_796_326_034_677_576)
    }

    #[test]
    fn a_json_line_has_the_fields_of_a_tracing_event() {
        let mut line = String::new();
        record("/calendar/events", "alice").write(&mut line, LogFormat::Json, &mut Stamp::default(), moment());
        assert_eq!(
            line,
            "{\"timestamp\":\"2026-12-03T19:27:14.677576Z\",\"level\":\"INFO\",\"request_id\":\"abc-1\",\
             \"method\":\"GET\",\"path\":\"/calendar/events\",\"status\":200,\"duration_ms\":1.234,\
             \"route\":\"calendar\",\"upstream\":\"http://10.0.0.5:9001\",\"upstream_ms\":1000.005,\
             \"client_id\":\"app\",\"subject\":\"alice\",\"target\":\"access\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(parsed["duration_ms"], 1.234);
    }

    #[test]
    fn a_text_line_reads_like_the_rest_of_the_log() {
        let mut line = String::new();
        record("/calendar/events", "alice").write(&mut line, LogFormat::Text, &mut Stamp::default(), moment());
        assert_eq!(
            line,
            "2026-12-03T19:27:14.677576Z  INFO access: request_id=\"abc-1\" method=\"GET\" \
             path=\"/calendar/events\" status=200 duration_ms=1.234 route=\"calendar\" \
             upstream=\"http://10.0.0.5:9001\" upstream_ms=1000.005 client_id=\"app\" subject=\"alice\"\n"
        );
    }

    #[test]
    fn values_cannot_break_out_of_their_string_or_line() {
        let mut line = String::new();
        let sneaky = "x\",\"status\":500,\"a\":\"\\\n{\u{1}\u{7f}é";
        record("/p", sneaky).write(&mut line, LogFormat::Json, &mut Stamp::default(), moment());
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(parsed["subject"], sneaky);
        assert_eq!(parsed["status"], 200);
    }

    #[test]
    fn civil_times_and_milliseconds() {
        assert_eq!(civil_time(0), "1970-01-01T00:00:00");
        assert_eq!(civil_time(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(civil_time(1_709_251_199), "2024-02-29T23:59:59");
        assert_eq!(civil_time(4_102_444_800), "2100-01-01T00:00:00");
        let mut stamp = Stamp::default();
        let mut out = String::new();
        stamp.write(&mut out, UNIX_EPOCH + Duration::from_micros(86_400_000_007));
        assert_eq!(out, "1970-01-02T00:00:00.000007Z");
        for (d, text) in [(0, "0.000"), (1_000, "0.001"), (45_000, "0.045"), (999_999_999, "999.999")] {
            let mut out = String::new();
            push_millis(&mut out, Duration::from_nanos(d));
            assert_eq!(out, text);
        }
    }

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&h));
        h.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_eq!(request_id(&h).len(), 32);
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }
}
