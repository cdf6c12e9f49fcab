//! Talking to upstreams: keep-alive connections pooled per worker (`pool`,
//! plain TCP or TLS as `tls::upstream` trusts), and HTTP/1.1 spoken by the
//! request's own task (`http1`). `pool::Pool::send` is the one narrow way
//! in: a request goes out, a response head and a streaming body come back.
//!
//! This room knows nothing of tokens, identities, routes or the
//! authorization server; `proxy` decides what a request looks like before
//! it is sent here.

pub mod http1;
pub mod pool;
