//! Portcullis: a reverse-proxy gateway that lets through only requests
//! carrying a valid OAuth 2.0 bearer token with the scopes their route
//! requires, and that issues those tokens itself.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library: parse and
//! validate a [`config::Config`], then [`server::Server::start`] and
//! [`server::Server::run`] with a shutdown future.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod affinity;
pub mod audit;
pub mod authz;
pub mod bearer;
pub mod cache;
pub mod config;
pub mod form;
pub mod gateway;
pub mod h2_streams;
pub mod logging;
pub mod manage;
pub mod metrics;
pub mod net;
pub mod oauth;
pub mod path;
pub mod proxy;
pub mod respond;
pub mod scope;
pub mod server;
pub mod stall;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod upstream_http1;
pub mod upstream_pool;
pub mod upstream_tls;
pub mod web;
