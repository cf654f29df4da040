//! t2v-worker (in progress).
fn main() {}
