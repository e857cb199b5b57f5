#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets from the protocol test vectors.

    python3 fuzz/make-seeds.py            # -> fuzz/seeds/<target>/<name>

Good samples from protocol/tests/vectors/*.json go to the target that decodes
them; bad samples from bad.json too, since they sit right next to a valid
input. Re-run after regenerating the vectors.
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent
VECTORS = ROOT.parent / "protocol" / "tests" / "vectors"
SEEDS = ROOT / "seeds"

BAD_DECODER_TARGET = {
    "manifest": "decode_manifest",
    "envelope-entry": "decode_envelope_entry",
    "card": "decode_card",
    "card-string": "decode_card",
    "checkpoint": "decode_checkpoint",
    "snapshot": "decode_snapshot",
    "identity-file": "identity_file",
    "chunk": "open_chunk",
    "chunk-by-id": "open_chunk",
    "meta": "open_chunk",
    "object-meta": "open_chunk",
}


def load(name):
    return json.loads((VECTORS / name).read_text())


def put(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name.replace("/", "-")).write_bytes(data)


def main():
    for i, row in enumerate(load("manifest.json")["manifests"]):
        put("decode_manifest", f"good-{i}", bytes.fromhex(row["bytes"]))
        put("decode_manifest", f"good-body-{i}", bytes.fromhex(row["body"]))
    for i, row in enumerate(load("manifest.json")["legacy_v1"]):
        put("decode_manifest", f"good-v1-{i}", bytes.fromhex(row["bytes"]))
        put("decode_manifest", f"good-v1-body-{i}", bytes.fromhex(row["body"]))
    for i, row in enumerate(load("snapshot.json")["snapshots"]):
        put("decode_snapshot", f"good-{i}", bytes.fromhex(row["bytes"]))
        put("decode_snapshot", f"good-body-{i}", bytes.fromhex(row["body"]))
    for i, row in enumerate(load("envelope.json")["entries"]):
        put("decode_envelope_entry", f"good-{i}", bytes.fromhex(row["bytes"]))
        put("decode_envelope_entry", f"good-body-{i}", bytes.fromhex(row["body"]))
    for i, row in enumerate(load("card.json")["cards"]):
        put("decode_card", f"good-{i}", bytes.fromhex(row["bytes"]))
        put("decode_card", f"good-body-{i}", bytes.fromhex(row["body"]))
        put("decode_card", f"good-string-{i}", row["string"].encode())
    for i, row in enumerate(load("checkpoint.json")["checkpoints"]):
        put("decode_checkpoint", f"good-{i}", bytes.fromhex(row["bytes"]))
        put("decode_checkpoint", f"good-body-{i}", bytes.fromhex(row["body"]))
    for i, row in enumerate(load("identity.json")["identities"]):
        put("identity_file", f"good-{i}", bytes.fromhex(row["file"]))
        # The body alone: the target also wraps its input with magic and checksum.
        put("identity_file", f"good-body-{i}", bytes.fromhex(row["file"])[16:-32])
    for row in load("chunks.json")["chunks"]:
        if "stored" in row:
            put("open_chunk", "good-" + row["name"], bytes.fromhex(row["stored"]))
    for row in load("meta.json")["metas"]:
        put("open_chunk", "good-meta-" + row["shape"], bytes.fromhex(row["sealed"]))
        put("open_chunk", "good-object-meta-" + row["shape"], bytes.fromhex(row["encoded"]))
    for i, row in enumerate(load("invite.json")["invites"]):
        put("decode_invite", f"good-{i}", row["string"].encode())
        put("decode_invite", f"good-payload-{i}", bytes.fromhex(row["payload"]))
    for row in load("bad.json")["samples"]:
        put(BAD_DECODER_TARGET[row["decoder"]], row["name"], bytes.fromhex(row["hex"]))


if __name__ == "__main__":
    main()
