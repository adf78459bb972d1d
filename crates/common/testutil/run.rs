//! The binaries' exits as the integration tests check them. Each test file
//! that runs a binary includes this file with
//! `#[path = "../../common/testutil/run.rs"] mod run;`.

use std::process::Output;

/// The output of a run that must succeed; else a panic showing its stderr.
pub fn ok(out: Output) -> Output {
    assert!(out.status.success(), "the binary failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// The stderr of a run that must fail; a run that succeeded is a panic.
pub fn failed(out: Output) -> String {
    assert!(!out.status.success(), "the binary should have failed; its stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}
