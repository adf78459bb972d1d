//! docs/cli/wrpo-train.md, the flag reference, is wrpo-train's --help: crates/common/testutil/cli_docs.rs.
#[path = "../../common/testutil/cli_docs.rs"]
mod cli_docs_support;

#[test]
fn flag_reference_matches_help() {
    cli_docs_support::check(env!("CARGO_BIN_EXE_wrpo-train"));
}
