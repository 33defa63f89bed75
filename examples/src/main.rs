//! Placeholder until the checkout example lands.
fn main() {}
