//! cargo-fuzz target: `properties::jwt` (see `fuzz/properties.rs`).
#![no_main]

#[path = "../properties.rs"]
#[allow(dead_code)] // each target uses one property
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::jwt(data));
