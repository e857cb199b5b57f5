//! A follower never moves its cursor past a change it failed to apply:
//! the upstream (a real node on 127.0.0.1) cannot deliver the chunks of a
//! new import for a while; the follower keeps its cursor, retries, and
//! applies everything once the chunks can be had.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bbsync_node::{FollowOptions, Multiaddr, Node, Responder, follow, server};
use bbsync_protocol::{
    Role, card_to_string,
    wire::{Request, Response},
};
use bbsync_store::{Store, progress::NoProgress};

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

async fn wait_until(secs: u64, what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_never_passes_a_change_that_failed() {
    let tmp = bbsync_tests::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    write(&tree, "config/bbs.toml", b"name = \"f\"\n");
    write(&tree, "boards/general/1.json", b"{\"id\":1}");
    let a = Arc::new(Store::init(&tmp.path().join("a"), "upstream").unwrap());
    let b = Arc::new(Store::init(&tmp.path().join("b"), "standby").unwrap());
    a.trust_add(&card_to_string(&b.card().unwrap()), Role::Full)
        .unwrap();
    a.import_bbs(&tree, &NoProgress).unwrap();

    // The upstream withholds every chunk while `failing` is set.
    let failing = Arc::new(AtomicBool::new(false));
    let withheld = Arc::new(AtomicU32::new(0));
    let (f, w) = (failing.clone(), withheld.clone());
    let responder: Responder = Arc::new(move |store, peer, req| match req {
        Request::GetChunks { ids } if f.load(Ordering::SeqCst) => {
            w.fetch_add(1, Ordering::SeqCst);
            Response::Chunks {
                chunks: vec![],
                missing: ids,
            }
        }
        other => server::answer(store, peer, other),
    });
    let upstream = Node::start_with_responder(a.clone(), responder).unwrap();
    let ha = upstream.handle();
    let addr = ha
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let addr: Multiaddr = format!("{addr}/p2p/{}", ha.peer_id()).parse().unwrap();
    let standby = Node::start(b.clone()).unwrap();
    let opts = FollowOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..Default::default()
    };
    let task = tokio::spawn(follow(standby.handle(), b.clone(), addr.clone(), opts));
    let a_id = a.instance_id();
    let cursor = |b: &Store| b.follow_cursor(&a_id).unwrap().unwrap_or(0);

    // Caught up with the first import.
    let last = a.last_seq().unwrap();
    wait_until(20, "the first import", || cursor(&b) == last).await;
    let caught_up = cursor(&b);

    // A new post whose chunks cannot be had: applied never, cursor kept.
    failing.store(true, Ordering::SeqCst);
    write(
        &tree,
        "boards/general/2.json",
        b"{\"id\":2,\"body\":\"withheld\"}",
    );
    a.import_bbs(&tree, &NoProgress).unwrap();
    let target = a.last_seq().unwrap();
    assert!(target > caught_up);
    wait_until(20, "several failed attempts", || {
        withheld.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert_eq!(
        cursor(&b),
        caught_up,
        "the cursor moved past a failed change"
    );
    let status = bbsync_node::follow::registry().lock().unwrap()[&addr.to_string()].clone();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("could not be fetched")),
        "{status:?}"
    );
    assert!(
        b.resolve("message:general/2").is_ok(),
        "the manifest is recorded"
    );
    assert_eq!(b.incomplete_count().unwrap(), 1);

    // The chunks come back: the change is applied and only then the cursor moves.
    failing.store(false, Ordering::SeqCst);
    wait_until(20, "the retried change", || cursor(&b) == target).await;
    assert_eq!(b.incomplete_count().unwrap(), 0);
    assert!(b.verify(true, &NoProgress).unwrap().is_ok());
    let (ea, eb) = (tmp.path().join("ea"), tmp.path().join("eb"));
    a.export_bbs(&ea, &NoProgress).unwrap();
    b.export_bbs(&eb, &NoProgress).unwrap();
    assert_eq!(
        fs::read(ea.join("boards/general/2.json")).unwrap(),
        fs::read(eb.join("boards/general/2.json")).unwrap()
    );
    task.abort();
    upstream.stop();
    standby.stop();
}
