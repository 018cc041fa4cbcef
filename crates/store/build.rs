// Intentionally empty: see the note on `protoc-bin-vendored` in Cargo.toml.
fn main() {}
