//! The authorization server's public surface, in one table: where each of
//! its endpoints answers under the issuer's path, and the names of the
//! cookies its pages set. Config validation (no route may take an
//! endpoint's path), the routing of requests (`web::endpoints`), the
//! metadata document (`oauth`), the pages (`web`) and the proxy's cookie
//! hygiene all read it here, so they cannot disagree.

/// An endpoint of the authorization server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// RFC 6749 §3.1, with the login and consent pages.
    Authorize,
    /// Where the login form posts.
    Login,
    /// RFC 6749 §3.2.
    Token,
    /// RFC 7009.
    Revocation,
    /// RFC 7662.
    Introspection,
    /// The public signing keys (RFC 7517).
    Jwks,
    /// RFC 8414.
    Metadata,
}

impl Endpoint {
    pub const ALL: [Endpoint; 7] = [
        Endpoint::Authorize,
        Endpoint::Login,
        Endpoint::Token,
        Endpoint::Revocation,
        Endpoint::Introspection,
        Endpoint::Jwks,
        Endpoint::Metadata,
    ];

    /// Whether the endpoint's path is under the issuer's (all but the
    /// metadata, whose well-known segment goes before it).
    pub fn under_issuer(self) -> bool {
        self != Endpoint::Metadata
    }

    /// What follows the issuer (its path, or its whole URL) in the
    /// endpoint's address; for the metadata, what goes before the issuer's
    /// path (RFC 8414 §3).
    pub const fn suffix(self) -> &'static str {
        match self {
            Endpoint::Authorize => "/oauth/authorize",
            Endpoint::Login => "/oauth/login",
            Endpoint::Token => "/oauth/token",
            Endpoint::Revocation => "/oauth/revoke",
            Endpoint::Introspection => "/oauth/introspect",
            Endpoint::Jwks => "/oauth/jwks",
            Endpoint::Metadata => "/.well-known/oauth-authorization-server",
        }
    }

    /// The normalised path this endpoint answers on, for an issuer whose
    /// path is `issuer_path` (`""` or `/base`).
    pub fn path(self, issuer_path: &str) -> String {
        match self {
            Endpoint::Metadata => format!("{}{issuer_path}", self.suffix()),
            _ => format!("{issuer_path}{}", self.suffix()),
        }
    }

    /// The address in the metadata document, for the issuer URL `issuer`.
    pub fn url(self, issuer: &str) -> String {
        format!("{issuer}{}", self.suffix())
    }
}

/// Where the pages' cookies are sent over plain HTTP (a loopback issuer):
/// `{issuer path}/oauth`. Under https they go to `/` with the `__Host-`
/// prefix.
pub fn cookie_path(issuer_path: &str) -> String {
    format!("{issuer_path}/oauth")
}

/// The gateway's own cookies. Over plain HTTP (a loopback issuer) they are
/// scoped to `cookie_path`; under https they carry the `__Host-` prefix,
/// which a browser accepts only from the host itself, `Secure`, with
/// `Path=/` and no `Domain`, so no sibling subdomain or plain-HTTP page can
/// plant one. Either way `proxy` takes them out of what goes to and comes
/// from upstreams: proxied APIs may share the host, and must neither read a
/// user's session nor plant one.
pub const SESSION_COOKIE: &str = "portcullis_session";
pub const LOGIN_COOKIE: &str = "portcullis_login";
pub const HOST_SESSION_COOKIE: &str = "__Host-portcullis_session";
pub const HOST_LOGIN_COOKIE: &str = "__Host-portcullis_login";

/// Every name the gateway's cookies go by.
pub const GATEWAY_COOKIES: [&str; 4] = [SESSION_COOKIE, LOGIN_COOKIE, HOST_SESSION_COOKIE, HOST_LOGIN_COOKIE];
