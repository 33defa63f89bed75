//! Compile tests for `#[step]`, `#[workflow]` and `#[branch]`: `ui/pass` must build and
//! run, `ui/fail` must fail with the diagnostics in the `.stderr` beside each case.
//!
//! The snapshots depend on the compiler version. After changing a diagnostic (or the
//! toolchain), regenerate them with
//! `TRYBUILD=overwrite cargo test -p durable-runtime --test ui` and read every changed
//! `.stderr` before committing it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
