//! Multi-source clone over real libp2p connections on 127.0.0.1 between
//! nodes in one process, one of them a faulty server that damages every
//! chunk it sends: the damage is caught by the hash check, nothing damaged
//! is stored, and the chunks come from the honest source instead.
#![allow(clippy::unwrap_used)]

use std::{fs, path::Path, sync::Arc};

use bbsync_node::{CloneOptions, Multiaddr, Node, Responder, clone_from, server};
use bbsync_protocol::{Role, card_to_string, wire::Response};
use bbsync_store::{Store, progress::NoProgress};

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn tree(root: &Path) {
    let mut x: u64 = 88172645463325252;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    write(root, "config/bbs.toml", b"name = \"multi\"\n");
    write(root, "applets/game/asset.bin", &noise(1_500_000));
    for i in 0..150 {
        let body = noise(2000);
        write(root, &format!("boards/general/{i}.json"), &body);
    }
    write(root, "files/big.bin", &noise(3_000_000));
}

/// Makes `to` a full copy of `from` through the store's replication calls.
fn copy(from: &Store, to: &Store) {
    let card = to.card().unwrap().into_value();
    let (page, _) = from.changes_page(0, 100_000).unwrap();
    let ids: Vec<_> = page.iter().map(|c| c.object_id).collect();
    let served = from.serve_manifests(&ids, &card, Role::Full).unwrap();
    let acc = to.accept_manifests(&from.instance_id(), served).unwrap();
    assert!(acc.rejected.is_empty());
    let chunks = to
        .missing_chunks()
        .unwrap()
        .into_iter()
        .map(|(id, _)| (id, from.serve_chunk(&id).unwrap()))
        .collect();
    to.accept_chunks(chunks).unwrap();
    to.complete_ready().unwrap();
}

async fn listen(node: &Node) -> Multiaddr {
    let h = node.handle();
    let addr = h
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    format!("{addr}/p2p/{}", h.peer_id()).parse().unwrap()
}

fn snapshot(root: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_chunks_from_one_source_come_from_another() {
    let tmp = bbsync_tests::tempdir().unwrap();
    let t = tmp.path().join("tree");
    tree(&t);
    let a = Arc::new(Store::init(&tmp.path().join("a"), "honest").unwrap());
    let b = Arc::new(Store::init(&tmp.path().join("b"), "faulty").unwrap());
    let c = Arc::new(Store::init(&tmp.path().join("c"), "clone").unwrap());
    a.import_bbs(&t, &NoProgress).unwrap();
    for (s, others) in [(&a, [&b, &c]), (&b, [&a, &c])] {
        for o in others {
            s.trust_add(&card_to_string(&o.card().unwrap()), Role::Full)
                .unwrap();
        }
    }
    copy(&a, &b);

    let honest = Node::start(a.clone()).unwrap();
    let faulty_answer: Responder =
        Arc::new(|store, peer, req| match server::answer(store, peer, req) {
            Response::Chunks {
                mut chunks,
                missing,
            } => {
                for (_, bytes) in chunks.iter_mut() {
                    let i = bytes.len() / 2;
                    bytes[i] ^= 0x01;
                }
                Response::Chunks { chunks, missing }
            }
            other => other,
        });
    let faulty = Node::start_with_responder(b.clone(), faulty_answer).unwrap();
    let a_addr = listen(&honest).await;
    let b_addr = listen(&faulty).await;

    let cloner = Node::start(c.clone()).unwrap();
    let h = cloner.handle();
    let pa = h.dial(a_addr).await.unwrap();
    let pb = h.dial(b_addr).await.unwrap();
    let report = clone_from(&h, c.clone(), &[pa, pb], &CloneOptions::default())
        .await
        .unwrap();
    assert!(report.complete, "{report:?}");
    assert!(
        report.chunks_rejected > 0,
        "the faulty source was never asked: {report:?}"
    );
    assert!(c.verify(true, &NoProgress).unwrap().is_ok());
    let out = tmp.path().join("out");
    c.export_bbs(&out, &NoProgress).unwrap();
    assert_eq!(snapshot(&t), snapshot(&out));

    // With the faulty source alone, nothing damaged is stored and the clone
    // says it is incomplete.
    let d = Arc::new(Store::init(&tmp.path().join("d"), "victim").unwrap());
    b.trust_add(&card_to_string(&d.card().unwrap()), Role::Full)
        .unwrap();
    // The manifests are the origin's (a's): the victim knows its card.
    d.trust_add(&card_to_string(&a.card().unwrap()), Role::Full)
        .unwrap();
    let victim = Node::start(d.clone()).unwrap();
    let hv = victim.handle();
    let pb = hv.dial(listen(&faulty).await).await.unwrap();
    let report = clone_from(&hv, d.clone(), &[pb], &CloneOptions::default())
        .await
        .unwrap();
    assert!(!report.complete);
    assert!(report.chunks_rejected > 0);
    assert_eq!(report.chunks_fetched, 0);
    let problems = d.verify(true, &NoProgress).unwrap().problems;
    assert!(
        problems
            .iter()
            .all(|p| p.class == bbsync_store::verify::ProblemClass::IncompleteObject)
    );
    for n in [honest, faulty, cloner, victim] {
        n.stop();
    }
}

/// Three nodes: C clones from A (the source) and B (a full copy) at once;
/// A dies after it has answered its first chunk request. What A did not
/// deliver comes from B, and C ends with a proven-complete copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_dies_mid_transfer_is_replaced_by_the_other() {
    use std::sync::atomic::{AtomicU32, Ordering};

    let tmp = bbsync_tests::tempdir().unwrap();
    let t = tmp.path().join("tree");
    tree(&t);
    let a = Arc::new(Store::init(&tmp.path().join("a"), "dying").unwrap());
    let b = Arc::new(Store::init(&tmp.path().join("b"), "standby").unwrap());
    let c = Arc::new(Store::init(&tmp.path().join("c"), "clone").unwrap());
    a.import_bbs(&t, &NoProgress).unwrap();
    for (s, others) in [(&a, [&b, &c]), (&b, [&a, &c])] {
        for o in others {
            s.trust_add(&card_to_string(&o.card().unwrap()), Role::Full)
                .unwrap();
        }
    }
    copy(&a, &b);

    // A answers one chunk request, then tells the test it is time to die,
    // and is slow with the next ones, so that they are in flight when it does.
    let served = Arc::new(AtomicU32::new(0));
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    let die_tx = std::sync::Mutex::new(Some(die_tx));
    let count = served.clone();
    let dying_answer: Responder = Arc::new(move |store, peer, req| {
        let is_chunks = matches!(req, bbsync_protocol::wire::Request::GetChunks { .. });
        if is_chunks && count.fetch_add(1, Ordering::SeqCst) >= 1 {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let answer = server::answer(store, peer, req);
        if is_chunks && let Some(tx) = die_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        answer
    });
    let dying = Node::start_with_responder(a.clone(), dying_answer).unwrap();
    let standby = Node::start(b.clone()).unwrap();
    let a_addr = listen(&dying).await;
    let b_addr = listen(&standby).await;

    let cloner = Node::start(c.clone()).unwrap();
    let h = cloner.handle();
    let pa = h.dial(a_addr).await.unwrap();
    let pb = h.dial(b_addr).await.unwrap();
    let opts = CloneOptions {
        jobs: 2,
        ..Default::default()
    };
    let job = {
        let c = c.clone();
        tokio::spawn(async move { clone_from(&h, c, &[pa, pb], &opts).await })
    };
    die_rx.await.unwrap();
    dying.stop();
    let report = job.await.unwrap().unwrap();
    assert!(report.complete, "{report:?}");
    assert!(
        report.chunks_unavailable > 0,
        "nothing was in flight from the dead source: {report:?}"
    );
    assert!(served.load(Ordering::SeqCst) >= 1);
    assert!(c.verify(true, &NoProgress).unwrap().is_ok());
    let out = tmp.path().join("out");
    c.export_bbs(&out, &NoProgress).unwrap();
    assert_eq!(snapshot(&t), snapshot(&out));
    standby.stop();
    cloner.stop();
}
