//! Compile-fail cases: one mistake per file under `tests/ui/`, its messages in the `.stderr`
//! beside it. Bless with `TRYBUILD=overwrite cargo test -p krescent-derive --test compiletest`,
//! then read every changed `.stderr`.
//!
//! The messages are rustc's, so they are pinned to this repository's one stable toolchain.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
