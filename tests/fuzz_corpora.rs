//! Every input of the fuzz targets' committed corpora (`fuzz/corpus/*`:
//! hand-written seeds, and what cargo-fuzz found interesting, minimised)
//! run through the targets' properties (`fuzz/properties.rs`) on stable,
//! so that whatever a fuzzer found once stays fixed. Running the fuzzers
//! themselves needs nightly: `benches/fuzz.sh`.

#[path = "../fuzz/properties.rs"]
mod properties;

use std::path::Path;

/// Runs `property` on each file of `fuzz/corpus/{target}`, and checks the
/// corpus is there (an empty one would make this test pass on nothing).
fn replay(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus input");
        let replayed = std::panic::catch_unwind(|| property(&data));
        assert!(replayed.is_ok(), "{target}: {} fails its property", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "{target}: an empty corpus");
}

#[test]
fn path_corpus() {
    replay("path", properties::path);
}

#[test]
fn bearer_corpus() {
    replay("bearer", properties::bearer);
}

#[test]
fn redirect_uri_corpus() {
    replay("redirect_uri", properties::redirect_uri);
}

#[test]
fn upstream_response_corpus() {
    replay("upstream_response", properties::upstream_response);
}

#[test]
fn config_corpus() {
    replay("config", properties::config);
}

#[test]
fn jwt_corpus() {
    replay("jwt", properties::jwt);
}

/// The JWT seeds are signed as the target means them to be: the valid
/// ones pass and each broken one is refused for what it breaks, so the
/// property above is checked on both sides.
#[test]
fn jwt_seeds_reach_both_sides_of_the_verifier() {
    let seed =
        |name: &str| std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/jwt").join(name)).unwrap();
    let now = properties::JWT_NOW;
    for accepted in ["valid", "aud-array", "typ-application", "in-leeway", "nbf-null", "no-iat", "escaped-iss", "jku"] {
        assert!(properties::jwt_accepts(&seed(accepted), now), "{accepted} is refused");
    }
    for refused in [
        "typ-jwt",
        "no-typ",
        "alg-none",
        "alg-hs256",
        "crit",
        "unknown-kid",
        "duplicate-iss",
        "duplicate-aud",
        "expired",
        "nbf-future",
        "exp-float",
        "exp-string",
        "iss-array",
        "no-client-id",
        "bad-scope",
        "sub-newline",
        "trailing-garbage",
        "bom",
        "raw-none",
    ] {
        assert!(!properties::jwt_accepts(&seed(refused), now), "{refused} is accepted");
    }
    assert!(!properties::jwt_accepts(&seed("valid"), now + 200), "accepted once expired");
    assert!(properties::jwt_accepts(&seed("exp-max"), u64::MAX));
}

#[test]
fn oauth_form_corpus() {
    replay("oauth_form", properties::oauth_form);
}
