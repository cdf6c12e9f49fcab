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
