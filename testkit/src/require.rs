//! Tests that need a server binary (`redis-server`, `memcached`, ...): skipped on a machine
//! without it, never skipped in CI.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

/// The binary to run for `name`: the path in the environment variable `env_override` if it
/// is set, otherwise `name` if an executable of that name is on `PATH`.
///
/// When there is none, the test cannot run:
/// - with `CI` unset (or empty, `0`, `false`), this prints one line saying the test is
///   skipped and why, and returns `None`: the test should return at once;
/// - with `CI` set, it panics, so that CI never passes by skipping.
///
/// The line goes straight to the process's stderr, past the test harness's capture, so that
/// `cargo test` shows it.
///
/// ```no_run
/// # async fn t() {
/// let Some(redis) = testkit::redis::RedisServer::start().await else {
///     return; // skipped, and said so
/// };
/// # drop(redis); }
/// ```
pub fn require_binary(name: &str, env_override: &str) -> Option<OsString> {
    if let Some(path) = std::env::var_os(env_override).filter(|p| !p.is_empty()) {
        return Some(path);
    }
    if on_path(name) {
        return Some(name.into());
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    let why = format!(
        "no `{name}` on PATH (install it, e.g. `apt-get install {name}`, or set {env_override} \
         to its path)"
    );
    if ci() {
        panic!("{test} needs {name}: {why}; CI is set, so it fails instead of skipping");
    }
    // One write of the whole line, so that it does not interleave with the harness's output.
    let _ = std::io::stderr().write_all(format!("skipped {test}: {why}\n").as_bytes());
    None
}

/// Whether `CI` is set to something other than empty, `0` or `false`.
fn ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !(v.is_empty() || v == "0" || v == "false"))
}

/// Whether an executable regular file `name` is in one of `PATH`'s directories.
fn on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(name)))
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}
