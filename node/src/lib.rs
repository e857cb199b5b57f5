//! Network node (libp2p swarm actor, transports, sync engine). Filled in by the network clone work.
