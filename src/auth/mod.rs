//! Bearer tokens on the resource-server side, and the tokens themselves:
//! finding a token in a request and challenging without one (RFC 6750,
//! `bearer`), minting and verifying access tokens (`tokens`) with the
//! signing keys the replicas share and rotate (`keys`) on the injectable clock (`clock`), and remembering what a
//! token proved (`cache`), so the hot path does no signature check and no
//! store read on a hit.
//!
//! Below it: `config`, `telemetry`, `store`, `scope`, `http`. It knows
//! nothing of the authorization server's grants (`oauth`), the pages
//! (`web`) or upstreams.

pub mod bearer;
pub mod cache;
pub mod clock;
pub mod keys;
pub mod tokens;
