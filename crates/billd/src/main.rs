//! billd's command-line entry point.
fn main() {}
