//! The manual (issue 15): `completions SHELL` for every shell, `man DIR`
//! with one page per command, and an example in every command's `--help`.
//! The list of commands is read from the binary's own `--help`, so a new
//! command is covered without touching this test.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use crate::common::*;

/// `bbsync ARGS...` (no data dir needed); stdout of a successful run.
fn out(args: &[&str]) -> String {
    let o = bare().args(args).output().unwrap();
    assert!(
        o.status.success(),
        "bbsync {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The subcommands a `--help` lists under "Commands:".
fn listed(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            // Wrapped description lines are indented further.
            (l.starts_with("  ") && !l.starts_with("   ") && name != "help")
                .then(|| name.to_string())
        })
        .collect()
}

/// Every command path (`["invite", "create"]`, ...), from `--help`.
fn commands() -> Vec<Vec<String>> {
    let mut all = Vec::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        for sub in listed(&out(&args)) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p.clone());
            all.push(p);
        }
    }
    all.sort();
    all
}

#[test]
fn every_command_has_an_example_in_its_help() {
    let cmds = commands();
    // The list is what the binary says, and it is not short.
    for expected in [
        &["clone"][..],
        &["invite", "create"],
        &["invite", "revoke"],
        &["identity", "encrypt"],
        &["trust", "add"],
        &["backups", "prune"],
        &["completions"],
        &["man"],
    ] {
        assert!(
            cmds.iter().any(|c| c == expected),
            "{expected:?} missing from {cmds:?}"
        );
    }
    let mut without = Vec::new();
    for c in &cmds {
        let mut args: Vec<&str> = c.iter().map(String::as_str).collect();
        args.push("--help");
        let help = out(&args);
        if !help.contains("Example") {
            without.push(c.join(" "));
        }
    }
    assert!(without.is_empty(), "no example in --help of: {without:?}");
}

#[test]
fn completions_for_every_shell_name_every_command() {
    let cmds = commands();
    let names: BTreeSet<&str> = cmds.iter().map(|c| c.last().unwrap().as_str()).collect();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = out(&["completions", shell]);
        assert!(script.len() > 1000, "{shell}: {} bytes", script.len());
        let missing: Vec<&&str> = names.iter().filter(|n| !script.contains(**n)).collect();
        assert!(missing.is_empty(), "{shell} completions lack {missing:?}");
        // Flags too (a global one and one of a nested command).
        assert!(script.contains("passphrase-file"), "{shell}");
        assert!(script.contains("expires"), "{shell}");
    }
    let o = bare().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn man_writes_one_page_per_command() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("man1");
    out(&["man", dir.to_str().unwrap()]);
    let mut expected: BTreeSet<String> = commands()
        .iter()
        .map(|c| format!("bbsync-{}.1", c.join("-")))
        .collect();
    expected.insert("bbsync.1".into());
    let found: BTreeSet<String> = std::fs::read_dir(&dir)?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(found, expected);
    for f in &found {
        let page = std::fs::read_to_string(dir.join(f))?;
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{f}");
        assert!(page.contains(".TH"), "{f} has no title");
        assert!(page.len() > 200, "{f} is nearly empty");
    }
    let clone = std::fs::read_to_string(dir.join("bbsync-clone.1"))?;
    assert!(
        clone.contains("INVITE") && clone.contains("Example"),
        "{clone}"
    );
    // Without DIR: bbsync(1) on stdout.
    let top = out(&["man"]);
    assert!(top.contains(".TH") && top.contains("invite"));
    Ok(())
}
