//! The authorization server over HTTP: the HTTP adapter of `oauth`, and
//! the pages a person sees.
//!
//! - `signin`: the authorization endpoint, with the login and consent
//!   pages (`pages` renders them).
//! - `endpoints`: the router of the authorization server's paths (the
//!   table is `config::endpoints`), and the token, revocation,
//!   introspection, JWKS and metadata endpoints.
//!
//! Each adapter turns its errors into responses in one place: the pages
//! answer with an error page (`Web::error_page`), the protocol endpoints
//! with RFC 6749 §5.2 JSON (`AuthzEndpoints::error_response`). This room parses
//! and renders; the decisions are `oauth`'s, and it has no store of its
//! own: sessions and consents go through `oauth` too.

pub mod endpoints;
mod pages;
mod signin;

pub use pages::Pages;
pub use signin::{LOGIN_WINDOW, MAX_LOGIN_FAILURES_PER_ADDRESS, MAX_LOGIN_FAILURES_PER_USER, Web};
