//! Talking to upstreams: keep-alive connections pooled per worker (`pool`,
//! plain TCP or TLS as `tls::upstream` trusts), HTTP/1.1 spoken by the
//! request's own task (`http1`), and HTTP/2 for the upstreams that speak
//! it (`http2`, hyper's client); and the choice among a route's instances
//! (`balance`). `pool::Pool::send` (and
//! `http2::Http2Pool::send`) are the narrow ways in: a request goes out,
//! a response head and a streaming body come back.
//!
//! This room knows nothing of tokens, identities, routes or the
//! authorization server; `proxy` decides what a request looks like before
//! it is sent here.

pub mod balance;
pub mod http1;
pub mod http2;
pub mod pool;
