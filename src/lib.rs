//! Portcullis: a reverse-proxy gateway that lets through only requests
//! carrying a valid OAuth 2.0 bearer token with the scopes their route
//! requires, and that issues those tokens itself.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library: parse and
//! validate a [`config::Config`], then [`server::Server::start`] and
//! [`server::Server::run`] with a shutdown future.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod gateway;
pub mod http;
pub mod oauth;
pub mod proxy;
pub mod scope;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod web;
