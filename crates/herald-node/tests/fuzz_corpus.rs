//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the targets' bodies on
//! stable Rust: every input that coverage-guided fuzzing kept must still be handled without a
//! panic. `make fuzz` grows the corpus with cargo-fuzz on nightly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no corpus for {target}");
    out
}

fn replay(target: &str, run: fn(&[u8])) {
    let inputs = corpus(target);
    for (path, data) in &inputs {
        let outcome = std::panic::catch_unwind(|| run(data));
        assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
    }
    eprintln!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn client_frame() {
    replay("client_frame", herald_node::fuzzing::client_frame);
}

#[test]
fn frame_reader() {
    replay("frame_reader", herald_node::fuzzing::frame_reader);
}

#[test]
fn api_request() {
    replay("api_request", herald_node::fuzzing::api_request);
}

#[test]
fn presence_data() {
    replay("presence_data", herald_node::fuzzing::presence_data);
}

#[test]
fn bus_envelope() {
    replay("bus_envelope", herald_node::fuzzing::bus_envelope);
}
