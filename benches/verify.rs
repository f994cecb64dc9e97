//! Placeholder until the verify bench lands.
fn main() {}
