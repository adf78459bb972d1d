//! The flag reference in docs/cli/: one markdown file per binary, assembled from the binary's own
//! `--help` and that of each subcommand, and checked against it.
//!
//! Each binary crate's `tests/cli_docs.rs` includes this file with
//! `#[path = "../../common/testutil/cli_docs.rs"]` and calls [`check`] with its binary
//! (`env!("CARGO_BIN_EXE_...")`); `env!` below then names that crate, so the page says which test
//! made it. `UPDATE_CLI_DOCS=1` writes the page instead of comparing.
//!
//! The help is made stable across machines: clap (with `wrap_help`) wraps at the terminal's width,
//! and with no terminal (stdout and stderr captured here, stdin closed) at `COLUMNS`, set to
//! [`WIDTH`]; colours are off; trailing spaces (clap pads some empty lines) are trimmed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The width the help is wrapped at.
pub const WIDTH: usize = 100;

/// Compares docs/cli/<binary>.md with the help `bin` prints now (or writes it, with
/// `UPDATE_CLI_DOCS=1`); panics naming the file, the first differing line and how to regenerate.
pub fn check(bin: &str) {
    let name = Path::new(bin).file_stem().and_then(|s| s.to_str()).expect("a binary's file name");
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = crate_dir.join("../..");
    let test = format!("crates/{}/tests/cli_docs.rs", crate_dir.file_name().unwrap().to_string_lossy());
    let regenerate = format!("UPDATE_CLI_DOCS=1 cargo test -p {} --test cli_docs", env!("CARGO_PKG_NAME"));
    let page = assemble(bin, name, &test, &regenerate);
    let rel = format!("docs/cli/{name}.md");
    let path = root.join(&rel);
    if std::env::var_os("UPDATE_CLI_DOCS").is_some_and(|v| !v.is_empty() && v != "0") {
        write_atomic(&path, &page);
        eprintln!("wrote {rel}");
        return;
    }
    let on_disk = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => panic!("{rel} cannot be read ({e}); generate it with: {regenerate}"),
    };
    if let Some((line, file, now)) = first_difference(&on_disk, &page) {
        panic!(
            "{rel} does not match `{name} ... --help` at line {line}:\n  {rel}: {file}\n  {name}: {now}\n\
             If the flags changed on purpose, regenerate it with: {regenerate}"
        );
    }
}

/// The page: a header line, then the top-level help and each subcommand's, each in a text block.
fn assemble(bin: &str, name: &str, test: &str, regenerate: &str) -> String {
    let top = help(bin, &[]);
    let subcommands = subcommands(&top);
    assert!(!subcommands.is_empty(), "no subcommands found under `Commands:` in `{name} --help`:\n{top}");
    let mut page = format!(
        "Generated from `{name} --help` by {test}, which checks it against the binary; \
         regenerate with `{regenerate}`.\n"
    );
    let mut section = |title: String, text: &str| write!(page, "\n## {title}\n\n```text\n{text}\n```\n").unwrap();
    section(name.to_string(), &top);
    for sub in &subcommands {
        section(format!("{name} {sub}"), &help(bin, &[sub]));
    }
    page
}

/// `bin ARGS... --help`, wrapped at [`WIDTH`], without colours or trailing spaces.
fn help(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .env("COLUMNS", WIDTH.to_string())
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let stdout = String::from_utf8(out.stdout).expect("help is UTF-8");
    assert!(
        out.status.success() && !stdout.trim().is_empty(),
        "`{bin} {} --help` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::trim_end).collect::<Vec<_>>().join("\n").trim_end().to_string()
}

/// The subcommands listed under `Commands:` (a name indented by two spaces; wrapped descriptions
/// are indented further), without clap's `help`.
fn subcommands(top: &str) -> Vec<String> {
    top.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .map(str::to_string)
        .collect()
}

/// The first line (1-based) where the two texts differ, with each one's line there; `None` if equal.
fn first_difference(file: &str, now: &str) -> Option<(usize, String, String)> {
    if file == now {
        return None;
    }
    let show = |l: Option<&str>| l.map_or("(end of text)".to_string(), |l| format!("{l:?}"));
    let (mut a, mut b) = (file.lines(), now.lines());
    for n in 1.. {
        match (a.next(), b.next()) {
            (None, None) => return Some((n, "(line endings or the final newline differ)".into(), "(one newline per line)".into())),
            (x, y) if x != y => return Some((n, show(x), show(y))),
            _ => {}
        }
    }
    unreachable!()
}

/// Writes `text` to `path` through a temporary file in the same folder, renamed over it.
fn write_atomic(path: &Path, text: &str) {
    let dir = path.parent().expect("a folder");
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let tmp: PathBuf = dir.join(format!(".{}.tmp-{}", path.file_name().unwrap().to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", tmp.display(), path.display()));
}
