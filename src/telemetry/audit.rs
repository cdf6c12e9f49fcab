//! The audit log: one JSON line per security event (a token issued,
//! refused or revoked, a replayed code, a reused refresh token, a failed or
//! throttled sign-in, a consent given, denied or withdrawn, a client
//! registered or changed), on the `audit` target.
//!
//! `crate::telemetry::logging` sends that target to its own destination (`[log]
//! audit`: stderr, a file, or off), always as JSON and whatever the log
//! level, so a SIEM can take it as it is. Events carry who (client id,
//! subject), what (grant type, scope, token type) and why (an RFC 6749
//! error code); the authorization server's endpoints run inside an `oauth`
//! span holding the peer address, which every event there carries. Never a
//! token, a code, a secret or a password.

use tracing::Level;

/// The `tracing` target of audit events.
pub const TARGET: &str = "audit";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    TokenIssued,
    /// The token endpoint refused a request (`reason` is the error code).
    TokenRefused,
    TokenRevoked,
    /// An authorization code was presented a second time; its grant is
    /// revoked.
    CodeReplayed,
    /// A rotated-out refresh token was presented; its family is revoked.
    RefreshTokenReused,
    LoginSucceeded,
    LoginFailed,
    LoginThrottled,
    ConsentGranted,
    ConsentDenied,
    ConsentWithdrawn,
    ClientRegistered,
    ClientRemoved,
    ClientSecretRotated,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::TokenIssued => "token_issued",
            Event::TokenRefused => "token_refused",
            Event::TokenRevoked => "token_revoked",
            Event::CodeReplayed => "code_replayed",
            Event::RefreshTokenReused => "refresh_token_reused",
            Event::LoginSucceeded => "login_succeeded",
            Event::LoginFailed => "login_failed",
            Event::LoginThrottled => "login_throttled",
            Event::ConsentGranted => "consent_granted",
            Event::ConsentDenied => "consent_denied",
            Event::ConsentWithdrawn => "consent_withdrawn",
            Event::ClientRegistered => "client_registered",
            Event::ClientRemoved => "client_removed",
            Event::ClientSecretRotated => "client_secret_rotated",
        }
    }

    /// Attacks and their symptoms are warnings; the rest is information.
    fn level(self) -> Level {
        match self {
            Event::TokenRefused
            | Event::CodeReplayed
            | Event::RefreshTokenReused
            | Event::LoginFailed
            | Event::LoginThrottled => Level::WARN,
            _ => Level::INFO,
        }
    }
}

/// Who and what an event is about; unset fields are left out of the line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fields<'a> {
    pub client_id: Option<&'a str>,
    /// The resource owner (or, for `client_credentials`, the client).
    pub subject: Option<&'a str>,
    pub grant_type: Option<&'a str>,
    pub scope: Option<&'a str>,
    /// `access_token` or `refresh_token` (RFC 7009's hint vocabulary).
    pub token_type: Option<&'a str>,
    /// An RFC 6749 error code, or a short word for why.
    pub reason: Option<&'a str>,
}

/// Writes one audit event.
pub fn record(event: Event, f: Fields<'_>) {
    // `tracing` wants the level at compile time, hence one call per level.
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                target: TARGET,
                $level,
                event = event.as_str(),
                client_id = f.client_id,
                subject = f.subject,
                grant_type = f.grant_type,
                scope = f.scope,
                token_type = f.token_type,
                reason = f.reason,
            )
        };
    }
    if event.level() == Level::WARN { emit!(Level::WARN) } else { emit!(Level::INFO) }
}
