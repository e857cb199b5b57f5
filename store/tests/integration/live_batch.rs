//! One batch of the watcher (`Store::import_live_paths`): it looks only at
//! the paths it names (and what lies below them), imports what changed
//! there, tombstones what was there and is gone, and leaves everything
//! else alone, however much of it there is.
#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::fs;

use bbsync_store::{
    Store,
    bbs::Focus,
    live::{LiveTree, Unrecorded},
    progress::NoProgress,
};

use crate::common;

use crate::common::write;

type R = Result<(), Box<dyn std::error::Error>>;

fn focus(paths: &[&str]) -> Focus {
    Focus::new(paths.iter().map(|p| (*p).to_string()))
}

fn live(s: &Store) -> usize {
    s.raw_db()
        .objects()
        .filter(|r| r.as_ref().is_ok_and(|(_, st)| !st.deleted))
        .count()
}

#[test]
fn a_batch_imports_and_deletes_only_what_its_paths_name() -> R {
    let tmp = common::tempdir()?;
    let root = tmp.path().join("tree");
    write(&root, "config/bbs.toml", b"name = \"B\"\n");
    write(&root, "applets/lord/main.lua", b"print(1)\n");
    write(&root, "applets/lord/sub/a.txt", b"a\n");
    for i in 0..30 {
        write(&root, &format!("boards/general/{i}.json"), b"{}\n");
        write(&root, &format!("boards/gen/{i}.json"), b"{}\n");
        write(&root, &format!("boards/other/{i}.json"), b"{}\n");
    }
    let s = Store::init(&tmp.path().join("data"), "a")?;
    let tree = LiveTree::open(&root, None)?;
    // The first (whole-tree) import: what a watcher does at start-up.
    let first = s.import_live(&tree, &|_| false, Unrecorded::Tombstone, &NoProgress)?;
    assert_eq!(first.stats.new, 92);
    let none = |_: &str| false;

    // A change the batch does not name is not looked at.
    write(&root, "boards/general/1.json", b"{\"edited\":1}\n");
    write(&root, "boards/other/99.json", b"{}\n");
    let r = s.import_live_paths(
        &tree,
        &focus(&["boards/general/1.json"]),
        &none,
        &NoProgress,
    )?;
    let st = &r.stats;
    assert_eq!(
        (st.new, st.changed, st.deleted, st.unchanged),
        (0, 1, 0, 0),
        "{st:?}"
    );
    assert!(s.resolve("message:other/99").is_err());

    // A file inside a directory object names its object; a path that is
    // gone deletes what lay there, and only that ("boards/gen" is not
    // "boards/general").
    write(&root, "applets/lord/sub/b.txt", b"b\n");
    fs::remove_file(root.join("boards/gen/3.json"))?;
    let r = s.import_live_paths(
        &tree,
        &focus(&[
            "applets/lord/sub/b.txt",
            "boards/gen/3.json",
            "boards/other/99.json",
        ]),
        &none,
        &NoProgress,
    )?;
    let st = &r.stats;
    assert_eq!((st.new, st.changed, st.deleted), (1, 1, 1), "{st:?}");
    assert_eq!(live(&s), 92);

    // A directory named whole: everything in it is looked at (a new board
    // moved into place), and a directory gone deletes everything below it.
    for i in 0..5 {
        write(&root, &format!("boards/new/{i}.json"), b"{}\n");
    }
    fs::remove_dir_all(root.join("boards/gen"))?;
    let r = s.import_live_paths(
        &tree,
        &focus(&["boards/new", "boards/gen"]),
        &none,
        &NoProgress,
    )?;
    let st = &r.stats;
    assert_eq!((st.new, st.deleted), (5, 29), "{st:?}");
    assert_eq!(live(&s), 92 + 5 - 29);
    assert!(
        s.resolve("message:general/2").is_ok(),
        "boards/general kept"
    );

    // A file still being written is neither imported nor deleted.
    write(&root, "boards/general/50.json", b"{\"half\":");
    fs::remove_file(root.join("boards/general/4.json"))?;
    let held = |rel: &str| rel.starts_with("boards/general/50") || rel == "boards/general/4.json";
    let r = s.import_live_paths(
        &tree,
        &focus(&["boards/general/50.json", "boards/general/4.json"]),
        &held,
        &NoProgress,
    )?;
    assert_eq!((r.stats.new, r.stats.deleted), (0, 0), "{:?}", r.stats);
    assert_eq!(r.held, vec!["boards/general/50.json".to_string()]);

    // What a whole-tree scan would find now, a batch found already.
    let again = s.import_live(&tree, &|_| false, Unrecorded::Keep, &NoProgress)?;
    let st = &again.stats;
    assert_eq!(
        (st.new, st.changed),
        (1, 0),
        "general/50, held before: {st:?}"
    );
    assert_eq!(st.deleted, 1, "general/4, held before: {st:?}");
    Ok(())
}
