//! The invite exchange at the protocol level, between real libp2p nodes on
//! 127.0.0.1 (issue 15): a redemption captured off the wire cannot be
//! replayed, neither by the peer that sent it nor by another; a proof for
//! another card or secret is refused; challenges are rate-limited per
//! peer; and an untrusted peer still gets `Denied` for everything else.
#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{sync::Arc, time::Duration};

use bbsync_node::{Multiaddr, Node, NodeError, NodeHandle, PeerId, invite::PEER_BURST};
use bbsync_protocol::{
    InviteRefusal, Role,
    wire::{Request, Response},
};
use bbsync_store::{Store, invite::InviteOptions};

async fn challenge(h: &NodeHandle, peer: PeerId) -> Result<[u8; 32], InviteRefusal> {
    match h.request(peer, Request::InviteChallenge).await.unwrap() {
        Response::InviteChallenge { challenge } => Ok(challenge),
        Response::InviteRefused { reason } => Err(reason),
        other => panic!("unexpected answer {other:?}"),
    }
}

async fn send(h: &NodeHandle, peer: PeerId, req: &Request) -> Result<Role, InviteRefusal> {
    match h.request(peer, req.clone()).await.unwrap() {
        Response::Redeemed { role } => Ok(role),
        Response::InviteRefused { reason } => Err(reason),
        other => panic!("unexpected answer {other:?}"),
    }
}

async fn client(store: &Arc<Store>, addr: &Multiaddr) -> (Node, NodeHandle) {
    let node = Node::start(store.clone()).unwrap();
    let h = node.handle();
    h.dial(addr.clone()).await.unwrap();
    (node, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_redemption_cannot_be_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let server_store = Arc::new(Store::init(&tmp.path().join("server"), "server").unwrap());
    let (_, invite) = server_store
        .invite_create(
            &InviteOptions {
                role: Role::Full,
                expires: Duration::from_secs(600),
                uses: 2,
                label: None,
            },
            vec!["/ip4/127.0.0.1/tcp/1".into()],
        )
        .unwrap();
    let server = Node::start(server_store.clone()).unwrap();
    let listen = server
        .handle()
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let peer = server.handle().peer_id();
    let addr: Multiaddr = format!("{listen}/p2p/{peer}").parse().unwrap();

    // a redeems, and its redemption is captured.
    let a_store = Arc::new(Store::init(&tmp.path().join("a"), "a").unwrap());
    let (_a, a) = client(&a_store, &addr).await;
    let ch = challenge(&a, peer).await.unwrap();
    let a_card = a_store.card().unwrap().bytes().to_vec();
    let mac = invite.redeem_mac(&a_store.instance_id(), &ch, &a_card);
    let captured = Request::Redeem {
        invite: invite.id,
        card: a_card.clone(),
        challenge: ch,
        mac,
    };
    assert_eq!(send(&a, peer, &captured).await, Ok(Role::Full));

    // Replayed by the same peer: its challenge was used up, and a newer
    // challenge is not the captured one.
    assert_eq!(
        send(&a, peer, &captured).await,
        Err(InviteRefusal::BadChallenge)
    );
    let newer = challenge(&a, peer).await.unwrap();
    assert_ne!(newer, ch);
    assert_eq!(
        send(&a, peer, &captured).await,
        Err(InviteRefusal::BadChallenge)
    );

    // Replayed by another peer: no challenge of its own ...
    let b_store = Arc::new(Store::init(&tmp.path().join("b"), "b").unwrap());
    let (_b, b) = client(&b_store, &addr).await;
    assert_eq!(
        send(&b, peer, &captured).await,
        Err(InviteRefusal::BadChallenge)
    );
    // ... and with one: a's card is not b's, and a's proof is not for b.
    let chb = challenge(&b, peer).await.unwrap();
    let with_a_card = Request::Redeem {
        invite: invite.id,
        card: a_card,
        challenge: chb,
        mac,
    };
    assert_eq!(
        send(&b, peer, &with_a_card).await,
        Err(InviteRefusal::CardMismatch)
    );
    let chb = challenge(&b, peer).await.unwrap();
    let with_a_mac = Request::Redeem {
        invite: invite.id,
        card: b_store.card().unwrap().bytes().to_vec(),
        challenge: chb,
        mac,
    };
    assert_eq!(
        send(&b, peer, &with_a_mac).await,
        Err(InviteRefusal::UnknownOrWrongSecret)
    );

    // Nothing of this spent a use or trusted b.
    let trusted: Vec<_> = server_store
        .raw_db()
        .trusted()
        .unwrap()
        .into_iter()
        .map(|(id, r)| (id, r.role))
        .collect();
    assert_eq!(trusted, vec![(a_store.instance_id(), Role::Full)]);
    assert_eq!(server_store.invites().unwrap()[0].used, 1);

    // Challenges are rate-limited per peer: b has asked for 2.
    for _ in 2..PEER_BURST {
        challenge(&b, peer).await.unwrap();
    }
    assert!(matches!(
        challenge(&b, peer).await,
        Err(InviteRefusal::RateLimited { .. })
    ));
    // A redemption needs a challenge, so b cannot go around the limit.
    assert_eq!(
        send(&b, peer, &with_a_mac).await,
        Err(InviteRefusal::BadChallenge)
    );

    // Everything else is still denied to the untrusted b, and allowed to a.
    assert!(matches!(
        b.request(peer, Request::Hello).await,
        Err(NodeError::Denied { .. })
    ));
    assert!(matches!(
        a.request(peer, Request::Hello).await,
        Ok(Response::Hello { .. })
    ));
}
