//! The systemd units in `contrib/` (issue 15): `systemd-analyze verify`
//! accepts them (with `ExecStart` pointed at the binary under test, as
//! verify checks that it exists), they say nothing about themselves on
//! stderr (verify reports bad keys and values there and still exits 0),
//! and they keep the hardening and the credential the README promises.
//!
//! Without `systemd-analyze` (Debian package `systemd`), or where it
//! cannot run, this test skips with a message, unless
//! `BBSYNC_REQUIRE_SYSTEMD=1` (set in `.ci/run`).

#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn contrib(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs `systemd-analyze verify` on `units`; (exit code, stderr lines that
/// name one of them).
fn verify(units: &[PathBuf]) -> Option<(i32, Vec<String>)> {
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .ok()?;
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let lines = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(n.as_str())))
        .map(String::from)
        .collect();
    Some((o.status.code().unwrap_or(-1), lines))
}

/// Whether `systemd-analyze verify` works here at all: a trivial good unit
/// must pass and a bad one must be reported.
fn usable(tmp: &Path) -> Result<(), String> {
    let good = tmp.join("probe-good.service");
    std::fs::write(&good, "[Service]\nExecStart=/bin/true\n").unwrap();
    let bad = tmp.join("probe-bad.service");
    std::fs::write(&bad, "[Service]\nExecStart=/bin/true\nNoSuchKey=1\n").unwrap();
    match (verify(&[good]), verify(&[bad])) {
        (None, _) | (_, None) => Err("systemd-analyze is not installed".into()),
        (Some((0, g)), Some((_, b))) if g.is_empty() && !b.is_empty() => Ok(()),
        (g, b) => Err(format!(
            "systemd-analyze verify does not work here (probe: {g:?}, {b:?})"
        )),
    }
}

#[test]
fn the_units_verify_and_keep_their_hardening() {
    let tmp = tempfile::tempdir().unwrap();
    if let Err(why) = usable(tmp.path()) {
        assert!(
            std::env::var_os("BBSYNC_REQUIRE_SYSTEMD").is_none(),
            "BBSYNC_REQUIRE_SYSTEMD is set, but {why}"
        );
        eprintln!("SKIPPED: {why} (install Debian's `systemd` package to run this test)");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_bbsync");
    let single = contrib("bbsync.service");
    let template = contrib("bbsync@.service");
    for (name, text) in [("bbsync.service", &single), ("bbsync@.service", &template)] {
        for needed in [
            "User=bbsync",
            "StateDirectory=bbsync",
            "StateDirectoryMode=0700",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "Restart=on-failure",
            "LoadCredential=passphrase:/etc/bbsync/",
            "ExecStart=/usr/bin/bbsync serve",
        ] {
            assert!(text.contains(needed), "{name} lacks {needed}");
        }
    }
    let a = tmp.path().join("bbsync.service");
    std::fs::write(&a, single.replace("/usr/bin/bbsync", bin)).unwrap();
    // A template is verified as one of its instances.
    let b = tmp.path().join("bbsync@main.service");
    std::fs::write(&b, template.replace("/usr/bin/bbsync", bin)).unwrap();
    let (code, lines) = verify(&[a, b]).unwrap();
    assert_eq!(code, 0, "systemd-analyze verify failed: {lines:?}");
    assert!(lines.is_empty(), "systemd-analyze verify: {lines:#?}");
    // The check can fail: a misspelt key in a copy is reported.
    let c = tmp.path().join("bbsync-typo.service");
    std::fs::write(
        &c,
        single
            .replace("/usr/bin/bbsync", bin)
            .replace("ProtectSystem=strict", "ProtectSistem=strict"),
    )
    .unwrap();
    let (_, lines) = verify(&[c]).unwrap();
    assert!(
        lines.iter().any(|l| l.contains("ProtectSistem")),
        "{lines:?}"
    );
}
