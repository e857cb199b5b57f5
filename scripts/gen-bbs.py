#!/usr/bin/env python3
"""Deterministic sample-BBS generator for bbsync.

Usage:
    python3 scripts/gen-bbs.py [--profile small|large|posts|scale] [--messages N] [--seed N] [--force] OUT_DIR

Writes a synthetic but realistic BBS tree that `bbsync import-bbs` reads, for
tests, the README demo (profile `small`, ~20 MB) and the store benchmark
(profile `large`, ~1 GB), and the pack-file benchmarks (profile `posts`:
20,000 small posts and one 400 MB binary; profile `scale`: small posts only,
200,000 by default, `--messages N` for another count).  Layout (the
contract the importer relies on):

    config/                     config files, nested (bbs.toml, boards.toml,
                                menus/*.ans, access/*.toml, text/*.txt, ...)
    applets/<name>/             one directory per applet: code (lua/js), ANSI
                                screens, docs, JSON, and binary assets
                                (png/ogg/zip-ish random blobs, bmp/wav/dat-ish
                                compressible blobs)
    data/<applet>/<user>/       per-user applet state (json/txt/binary saves)
    boards/<board>/<id>.json    one message per file:
                                {"id","board","from","to","subject","date",
                                 "body","reply_to"}
    files/<path>                uploaded files, nested directories

Determinism: the output is a pure function of (profile, seed).  All
randomness comes from random.Random instances seeded with "<seed>:<section>"
strings (str seeds are hashed with SHA-512 by `random`, independent of
PYTHONHASHSEED), every collection is iterated in a fixed order, no clock,
locale, os.urandom, or transcendental float math (libm may differ between
machines) feeds into the content, and paths are written as explicit UTF-8
bytes so the file-system encoding of the locale does not matter.  The
measured wall time appears only in the summary line, never in the tree.

Edge cases that the importer must reproduce byte for byte, and why they exist:
  * empty files (files/misc/empty file.txt, applets/lord/state/game.lock,
    some lib/.keep): a zero-length file has no chunk at all and must still
    come back as an empty file, not be dropped;
  * empty directories (applets/lord/cache/, data/lord/<user>/tmp/, a few more):
    a directory with no files has no content to address, so the importer must
    record it explicitly;
  * deep nesting (applets/<x>/assets/maps/world/<region>/<zone>/tiles/...,
    6 levels below the applet dir): path handling must not assume shallow
    trees;
  * names with spaces, apostrophes, parentheses, non-ASCII letters, CJK,
    Greek, Cyrillic, a 4-byte emoji, and one NFD-normalized name
    ("files/misc/NFD Cafe<U+0301>.txt"): names are stored as bytes and must
    not be normalized, split on spaces, or ASCII-folded;
  * file contents that are not valid UTF-8 (ANSI screens in CP437 with SAUCE
    records, binary blobs): contents are opaque bytes;
  * identical files at several paths (LICENSE.txt in every applet, a mirrored
    upload): the content-addressed store deduplicates them, yet every path
    must come back;
  * a mix of incompressible (random) and compressible (structured,
    low-entropy, text) data, so compression and chunking are both exercised;
  * message bodies from 200 B to 64 KB, with "> " quoting, CRLF-free text,
    some non-ASCII words and emoji inside JSON.
There are no symlinks, no special files, and every name is valid UTF-8.
Board, applet and user directory names are ASCII slugs.

Sizes: the uploads (files/) are generated last and fill the tree up to an
exact byte target per profile (small: 20,500,000 B; large: 1,030,000,000 B,
i.e. 1.03 GB = 0.96 GiB), so every seed gives the same total size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import sys
import time
from datetime import datetime, timedelta, timezone

PROG = "gen-bbs.py"
PIECE = 4 << 20  # bytes per write for big blobs
TEXT_EXTS = frozenset({"txt", "nfo", "diz", "ans", "pas", "c", "lua", "js", ""})
TEXT_MAX = 512_000  # largest generated text upload

# --------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------

PROFILES = {
    "small": {
        "target_bytes": 20_500_000,
        "boards": 6,
        "messages": 2_200,
        "users": 40,
        "applets": 12,
        "applet_asset_bytes": (250_000, 700_000),
        "big_assets": 0,
        "big_asset_bytes": (0, 0),
        "data_users": (4, 12),
        "data_big_prob": 0.0,
        "upload_bytes": (2_000, 600_000),
        "big_uploads": [],
        "mirror_bytes": 300_000,
    },
    "large": {
        "target_bytes": 1_030_000_000,
        "boards": 12,
        "messages": 24_000,
        "users": 400,
        "applets": 24,
        "applet_asset_bytes": (2_000_000, 9_000_000),
        "big_assets": 8,
        "big_asset_bytes": (5_000_000, 40_000_000),
        "data_users": (20, 140),
        "data_big_prob": 0.04,
        "upload_bytes": (10_000, 8_000_000),
        # (path, kind, min size, max size)
        "big_uploads": [
            ("files/images/cd-roms/BBS Shareware Collection 1996.iso", "mixed",
             90_000_000, 100_000_000),
            ("files/games/dos/Doom Mega WAD Pack.zip", "random", 40_000_000, 60_000_000),
            ("files/music/mods/Complete Mod Archive 1993.zip", "random",
             20_000_000, 40_000_000),
            ("files/source/linux-0.99-src.tar", "lowentropy", 10_000_000, 25_000_000),
            ("files/utils/disk/floppy images.img", "structured", 8_000_000, 16_000_000),
        ],
        "mirror_bytes": 20_000_000,
    },
    # A BBS dominated by small posts, plus one big binary (the import and
    # clone goals of issue 12 are measured on it besides `large`).
    "posts": {
        "target_bytes": 0,  # no filler uploads
        "boards": 12,
        "messages": 20_000,
        "users": 200,
        "applets": 2,
        "applet_asset_bytes": (20_000, 60_000),
        "big_assets": 0,
        "big_asset_bytes": (0, 0),
        "data_users": (2, 6),
        "data_big_prob": 0.0,
        "upload_bytes": (2_000, 20_000),
        "big_uploads": [
            ("files/images/disk image.img", "mixed", 400_000_000, 400_000_000),
        ],
        "mirror_bytes": 100_000,
    },
    # Small posts only, as many as --messages says (default 200,000), for
    # scripts/bench-scale.sh.
    "scale": {
        "target_bytes": 0,
        "boards": 12,
        "messages": 200_000,
        "users": 400,
        "applets": 2,
        "applet_asset_bytes": (20_000, 60_000),
        "big_assets": 0,
        "big_asset_bytes": (0, 0),
        "data_users": (2, 6),
        "data_big_prob": 0.0,
        "upload_bytes": (2_000, 20_000),
        "big_uploads": [],
        "mirror_bytes": 100_000,
    },
}

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

WORDS = """
the a an and or but if then so because while when where who what why how
is are was were be been being have has had do does did will would can could
should might must shall may i you he she we they it this that these those my
your our their its me him her us them not no yes all any some many few more
most other such only own same than too very just also now here there again
once about above after before below between into through during over under
up down out off on in at by for from of to with without around against
bbs sysop modem baud node door board message thread reply post upload
download file archive zip ansi ascii art menu login logoff caller user
handle alias password account level access time credits ratio points game
score hiscore player turn turns sector planet ship trader fighter cargo port
dragon forest inn tavern weapon armor gold gems quest dungeon knight wizard
castle village king realm empire war attack defend army battle trade market
computer keyboard monitor disk drive floppy hard memory cpu chip board card
network internet telnet ssh terminal screen color font cursor line baudrate
packet echo mail netmail fidonet point hub zone net node outbound inbound
software program code source compile build release version bug fix patch
hack crack demo scene group intro music tracker module sample pattern
week weekend night morning evening today tomorrow yesterday year month hour
minute second long short big small old new good bad great best worst nice
cool awesome weird strange funny crazy fast slow quick easy hard simple
think know want need like love hate see look find give take make get go come
say tell ask try use work call keep let put seem feel leave run play win lose
thanks please sorry hello hey welcome anyone everyone someone nobody
question answer problem idea plan reason way thing stuff people friend guy
café naïve résumé über déjà jalapeño smörgåsbord Zürich façade coöperate
""".split()

ASCII_WORDS = [w for w in WORDS if w.isascii()]
CODE_WORDS = [w for w in ASCII_WORDS if len(w) > 2 and w.isalpha()]

GREETINGS = ["Hi all,", "Hey {to},", "Greetings,", "Yo {to}!", "Hello {to},",
             "Morning folks,", "Quick question:"]
TAGLINES = [
    "... Xyzzy.  Nothing happens.",
    "... A computer without a modem is like a day without sunshine.",
    "... Press any key to continue, or any other key to abort.",
    "... My other computer is a PDP-11.",
    "... 28.8k ought to be enough for anybody.",
    "... Ceci n'est pas une tagline.",
    "... Sent from my 386DX/40 \U0001F642",
    "... ATH0 NO CARRIER",
]

BOARD_NAMES = [
    ("general", 10, "General discussion"),
    ("tech", 7, "Hardware, software and modems"),
    ("trading", 4, "Buy, sell, trade"),
    ("art", 3, "ANSI and ASCII art"),
    ("announcements", 1, "Sysop announcements"),
    ("games", 6, "Door games talk"),
    ("retro", 4, "Retro computing"),
    ("music", 3, "Trackers, mods and chiptunes"),
    ("sysops", 2, "Sysop corner"),
    ("offtopic", 6, "Anything goes"),
    ("coding", 4, "Programming"),
    ("hardware", 3, "Hardware help"),
]

APPLET_NAMES = [
    "lord", "tradewars", "usurper", "bre", "solar-realms", "global-war",
    "pimpwars", "darkness", "oregon-trail", "chess", "tetris", "wordle",
    "hangman", "trivia", "blackjack", "space-dm", "lunatix", "yankee-trader",
    "galactic-dynasty", "nethack", "kyrandia", "mutants", "arrowbridge",
    "dungeon-crawl", "fishing", "slots", "weather", "oneliners", "bbs-list",
    "last-callers",
]

HANDLE_A = ["Dark", "Neon", "Cyber", "Silent", "Crimson", "Iron", "Lone", "Night",
            "Phantom", "Acid", "Chrome", "Static", "Razor", "Lucky", "Frost",
            "Shadow", "Digital", "Ghost", "Turbo", "Mystic", "Quantum", "Rusty",
            "Solar", "Vapor", "Zero", "Electric", "Hyper", "Astro", "Binary", "Copper"]
HANDLE_B = ["Star", "Wolf", "Rider", "Phreak", "Byte", "Knight", "Hawk", "Fox",
            "Runner", "Wizard", "Dragon", "Raven", "Blade", "Coder", "Falcon",
            "Viper", "Pilot", "Sage", "Tiger", "Monk", "Hacker", "Ranger", "Ace",
            "Jester", "Baron", "Comet", "Drifter", "Lynx", "Nomad", "Spark"]

# Per-applet translated docs: names with spaces and non-ASCII letters.
I18N_DOCS = [
    ("français", "règles du jeu.txt"),
    ("deutsch", "Spielregeln für Anfänger.txt"),
    ("español", "cómo jugar.txt"),
    ("日本語", "説明書.txt"),
    ("русский", "правила игры.txt"),
    ("ελληνικά", "οδηγίες.txt"),
    ("português", "instruções do jogo.txt"),
]

LICENSE_TEXT = (
    "This applet is distributed with the BBS for the enjoyment of its callers.\n"
    "Permission is granted to copy and share it on any bulletin board system,\n"
    "provided this notice is kept.  NO WARRANTY.  Play at your own risk.\n"
).encode("utf-8")

# CP437 block-drawing bytes used in ANSI art.
CP437_BLOCKS = bytes([0xB0, 0xB1, 0xB2, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFE, 0x20])

# Byte translation table for "low-entropy" blobs: maps uniform random bytes
# to a skewed alphabet of 9 symbols (about 2 bits of entropy per byte).
_SKEW = [0x00] * 128 + [0x20] * 64 + [0xFF] * 32 + [0x41] * 16 + [0x42] * 8 + \
    [0x43] * 4 + [0x44] * 2 + [0x45] + [0x46]
SKEW = bytes(_SKEW)
assert len(SKEW) == 256

MAGIC = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "ogg": b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00",
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
    "bmp": b"BM",
    "wav": b"RIFF\x00\x00\x00\x00WAVEfmt ",
    "gif": b"GIF89a",
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "exe": b"MZ\x90\x00\x03\x00\x00\x00",
    "arj": b"\x60\xea",
    "lzh": b"\x00\x00-lh5-",
    "mod": b"M.K.",
    "iso": b"\x00" * 16,
}


class GenError(Exception):
    """A user-facing error: printed as one line, exit 1."""


# --------------------------------------------------------------------------
# Output tree
# --------------------------------------------------------------------------

class Tree:
    """Writes files below a root, with paths given as '/'-separated str.

    Paths are encoded to UTF-8 bytes explicitly so the locale's file-system
    encoding never matters.  Counts files and bytes written.
    """

    def __init__(self, root: bytes):
        self.root = root
        self.files = 0
        self.bytes = 0
        self._written: set[str] = set()  # membership only, never iterated
        self._dirs: set[str] = set()

    def _abs(self, rel: str) -> bytes:
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") or "\x00" in p for p in parts):
            raise AssertionError(f"bad relative path {rel!r}")
        return self.root + b"/" + rel.encode("utf-8")

    def mkdir(self, rel: str) -> None:
        if rel not in self._dirs:
            os.makedirs(self._abs(rel), exist_ok=True)
            self._dirs.add(rel)

    def _open(self, rel: str):
        if rel in self._written:
            raise AssertionError(f"path written twice: {rel!r}")
        self._written.add(rel)
        parent = rel.rpartition("/")[0]
        if parent:
            self.mkdir(parent)
        return open(self._abs(rel), "wb")

    def write(self, rel: str, data: bytes) -> None:
        with self._open(rel) as f:
            f.write(data)
        self.files += 1
        self.bytes += len(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write(rel, text.encode("utf-8"))

    def write_chunks(self, rel: str, chunks) -> int:
        n = 0
        with self._open(rel) as f:
            for c in chunks:
                f.write(c)
                n += len(c)
        self.files += 1
        self.bytes += n
        return n


# --------------------------------------------------------------------------
# Content generators
# --------------------------------------------------------------------------

def skew_int(rng: random.Random, lo: int, hi: int) -> int:
    """Integer in [lo, hi], skewed towards lo (min of two uniform draws)."""
    return min(rng.randint(lo, hi), rng.randint(lo, hi))


def split_sizes(rng: random.Random, total: int, parts: int) -> list[int]:
    """Split `total` into `parts` non-negative integers at random cut points."""
    cuts = sorted(rng.randint(0, total) for _ in range(parts - 1))
    edges = [0] + cuts + [total]
    return [edges[i + 1] - edges[i] for i in range(parts)]


def make_line_pool(rng: random.Random, n: int) -> list[str]:
    """n sentence-like lines of 24-80 characters made of WORDS."""
    lines = []
    for _ in range(n):
        target = rng.randint(24, 76)
        words = []
        length = 0
        while length < target:
            w = rng.choice(WORDS)
            words.append(w)
            length += len(w) + 1
        s = " ".join(words)
        if s[0].isascii():
            s = s[0].upper() + s[1:]
        r = rng.random()
        if r < 0.55:
            s += "."
        elif r < 0.65:
            s += "!"
        elif r < 0.78:
            s += "?"
        elif r < 0.88:
            s += ","
        elif r < 0.93:
            s += "..."
        lines.append(s)
    return lines


def text_block(rng: random.Random, pool: list[str], nbytes: int) -> str:
    """Paragraphs of pool lines, roughly nbytes long (at least one line)."""
    out: list[str] = []
    size = 0
    while size < nbytes:
        para = rng.choices(pool, k=rng.randint(2, 7))
        for line in para:
            out.append(line)
            size += len(line) + 1
        out.append("")
        size += 1
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def code_text(rng: random.Random, lang: str, nbytes: int) -> str:
    """Plausible Lua or JavaScript source, roughly nbytes long."""
    def ident() -> str:
        return rng.choice(CODE_WORDS) + "_" + rng.choice(CODE_WORDS)

    if lang == "lua":
        out = [f"-- {rng.choice(CODE_WORDS)} module, generated for bbsync tests\n",
               "local M = {}\n\n"]
    else:
        out = [f"// {rng.choice(CODE_WORDS)} module, generated for bbsync tests\n",
               "'use strict';\n\n"]
    size = sum(len(x) for x in out)
    while size < nbytes:
        f, a, b, c = ident(), ident(), ident(), ident()
        n = rng.randint(0, 9999)
        s = rng.choice(CODE_WORDS)
        t = rng.randint(0, 3)
        if lang == "lua":
            if t == 0:
                chunk = (f"function M.{f}({a}, {b})\n"
                         f"  if {a} > {n} then\n"
                         f"    return {b} .. \"{s}\"\n"
                         f"  end\n"
                         f"  local {c} = ({a} or 0) * {n % 97 + 1}\n"
                         f"  return {c}\nend\n\n")
            elif t == 1:
                chunk = (f"local function {f}(t)\n"
                         f"  for i, v in ipairs(t) do\n"
                         f"    if v.{a} == \"{s}\" then bbs.print(\"{s} \" .. i) end\n"
                         f"  end\nend\n\n")
            elif t == 2:
                chunk = f"M.{a} = {{ {b} = {n}, {c} = \"{s}\", enabled = {str(n % 2 == 0).lower()} }}\n"
            else:
                chunk = f"-- TODO({s}): {rng.choice(CODE_WORDS)} the {rng.choice(CODE_WORDS)} before {n}\n"
        else:
            if t == 0:
                chunk = (f"function {f}({a}, {b}) {{\n"
                         f"  if ({a} > {n}) {{\n"
                         f"    return {b} + '{s}';\n"
                         f"  }}\n"
                         f"  const {c} = ({a} || 0) * {n % 97 + 1};\n"
                         f"  return {c};\n}}\n\n")
            elif t == 1:
                chunk = (f"exports.{f} = function (list) {{\n"
                         f"  return list.filter((x) => x.{a} === '{s}').map((x) => x.{b});\n"
                         f"}};\n\n")
            elif t == 2:
                chunk = f"const {a} = {{ {b}: {n}, {c}: '{s}', enabled: {str(n % 2 == 0).lower()} }};\n"
            else:
                chunk = f"// TODO({s}): {rng.choice(CODE_WORDS)} the {rng.choice(CODE_WORDS)} before {n}\n"
        out.append(chunk)
        size += len(chunk)
    out.append("return M\n" if lang == "lua" else "module.exports.ready = true;\n")
    return "".join(out)


def sauce_record(rng: random.Random, title: str) -> bytes:
    """A 128-byte SAUCE metadata record as found at the end of ANSI files."""
    def field(s: str, n: int) -> bytes:
        return s.encode("ascii", "replace")[:n].ljust(n, b" ")
    date = f"{rng.randint(1990, 1999):04d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    rec = (b"SAUCE00" + field(title, 35) + field(rng.choice(HANDLE_A) + rng.choice(HANDLE_B), 20)
           + field("ACiD Productions" if rng.random() < 0.5 else "iCE", 20)
           + date.encode("ascii") + struct.pack("<IBBHHHHB", 0, 1, 1, 80, 25, 0, 0, 0)
           + b"\x00" + b"\x00" * 22)
    return b"\x1a" + rec[:128].ljust(128, b"\x00")


def ansi_screen(rng: random.Random, pool: list[str], nbytes: int, sauce: bool) -> bytes:
    """ANSI art: SGR colour codes, CP437 block characters and text, CRLF lines."""
    ascii_pool = [line for line in pool if line.isascii()]
    out = [b"\x1b[0m\x1b[2J"]
    size = len(out[0])
    while size < nbytes:
        line = bytearray()
        col = 0
        while col < 79:
            line += b"\x1b[%d;%dm" % (rng.randint(0, 1), 30 + rng.randint(0, 7))
            if rng.random() < 0.7:
                run = rng.randint(1, 12)
                line += bytes([rng.choice(CP437_BLOCKS)]) * run
                col += run
            else:
                frag = rng.choice(ascii_pool)[: rng.randint(4, 30)].encode("ascii")
                line += frag
                col += len(frag)
        line += b"\r\n"
        out.append(bytes(line))
        size += len(line)
    out.append(b"\x1b[0m")
    if sauce:
        out.append(sauce_record(rng, rng.choice(ascii_pool)[:35]))
    return b"".join(out)


def random_chunks(rng: random.Random, n: int):
    """n incompressible bytes (compressed media, archives)."""
    while n > 0:
        k = min(n, PIECE)
        yield rng.randbytes(k)
        n -= k


def lowentropy_chunks(rng: random.Random, n: int):
    """n bytes of ~2 bits entropy per byte (PCM-ish, uncompressed data)."""
    while n > 0:
        k = min(n, PIECE)
        yield rng.randbytes(k).translate(SKEW)
        n -= k


def structured_chunks(rng: random.Random, n: int):
    """n highly compressible bytes: 4 KiB records sharing a pattern, each with
    a unique header (no two records are equal, so CDC cannot dedup them) and
    now and then a random patch."""
    base = rng.randbytes(64).translate(SKEW) * 64  # 4096 bytes
    idx = 0
    buf = bytearray()
    while n > 0:
        block = bytearray(base)
        block[0:16] = struct.pack("<IIQ", idx, n & 0xFFFFFFFF, rng.getrandbits(64))
        if rng.random() < 0.25:
            off = rng.randrange(16, 4096 - 256)
            block[off:off + 256] = rng.randbytes(256)
        idx += 1
        take = min(n, 4096)
        buf += block[:take]
        n -= take
        if len(buf) >= PIECE:
            yield bytes(buf)
            buf = bytearray()
    if buf:
        yield bytes(buf)


def mixed_chunks(rng: random.Random, n: int):
    """n bytes alternating random, low-entropy and structured segments
    (disk images, tracker modules)."""
    while n > 0:
        k = min(n, rng.randint(64 << 10, 1 << 20))
        kind = rng.choice(("random", "lowentropy", "structured"))
        yield from GENERATORS[kind](rng, k)
        n -= k


GENERATORS = {
    "random": random_chunks,
    "lowentropy": lowentropy_chunks,
    "structured": structured_chunks,
    "mixed": mixed_chunks,
}


def blob(rng: random.Random, kind: str, n: int, magic: bytes = b""):
    """Exactly n bytes: magic header (truncated if n is tiny) then `kind` data."""
    head = magic[:n]
    if head:
        yield head
    yield from GENERATORS[kind](rng, n - len(head))


def collect(chunks) -> bytes:
    return b"".join(chunks)


# --------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------

def iso_date(d: datetime) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}Z"


class BBSGen:
    def __init__(self, tree: Tree, profile: str, seed: int, messages: int | None = None):
        self.tree = tree
        self.profile = profile
        self.p = dict(PROFILES[profile])
        if messages is not None:
            self.p["messages"] = messages
        self.seed = seed
        plan = self.rng("plan")
        self.pool = make_line_pool(self.rng("pool"), 20_000)

        # Users: unique CamelCase handles; data dirs use the lower-case slug.
        handles = sorted({a + b for a in HANDLE_A for b in HANDLE_B})
        users = plan.sample(handles, self.p["users"])
        for i in range(len(users)):
            if plan.random() < 0.3:
                users[i] += str(plan.randint(1, 99))
        self.users = sorted(set(users))
        self.sysop = self.users[0]

        self.boards = BOARD_NAMES[: self.p["boards"]]
        others = sorted(plan.sample([a for a in APPLET_NAMES if a != "lord"],
                                    self.p["applets"] - 1))
        self.applets = sorted(["lord"] + others)
        self.bbs_name = plan.choice(["The Rusty Modem", "Neon Dreams BBS",
                                     "Castle Anthrax", "The Dragon's Lair"])
        self.epoch = datetime(2019, 1, 1, tzinfo=timezone.utc)

    def rng(self, section: str) -> random.Random:
        """An independent stream per section, so sections don't shift each other."""
        return random.Random(f"{self.seed}:{self.profile}:{section}")

    # ---- config ---------------------------------------------------------

    def gen_config(self) -> None:
        rng = self.rng("config")
        t = self.tree
        t.write_text("config/bbs.toml", (
            "# Main BBS configuration\n"
            f"name = \"{self.bbs_name}\"\n"
            f"sysop = \"{self.sysop}\"\n"
            f"location = \"{rng.choice(['Portland, OR', 'Zürich', 'Ōsaka', 'Montréal'])}\"\n"
            f"nodes = {rng.randint(2, 8)}\n"
            f"max_time_per_call_min = {rng.choice([30, 45, 60, 90])}\n"
            f"new_user_level = {rng.choice([10, 20])}\n\n"
            "[telnet]\nenabled = true\n"
            f"port = {rng.choice([23, 2323])}\n\n"
            "[ssh]\nenabled = true\n"
            f"port = {rng.choice([22, 2222])}\n"
            "host_key = \"config/keys/ssh_host_ed25519\"\n\n"
            "[paths]\nboards = \"boards\"\nfiles = \"files\"\napplets = \"applets\"\ndata = \"data\"\n"))
        lines = ["# Message boards\n"]
        for name, _, desc in self.boards:
            lines.append(f"\n[[board]]\nname = \"{name}\"\ndescription = \"{desc}\"\n"
                         f"read_level = {rng.choice([0, 10, 20])}\n"
                         f"post_level = {rng.choice([10, 20, 50 if name == 'announcements' else 20])}\n")
        t.write_text("config/boards.toml", "".join(lines))
        lines = ["# Installed applets\n"]
        for a in self.applets:
            lines.append(f"\n[[applet]]\nname = \"{a}\"\nmin_level = {rng.choice([10, 20, 30])}\n"
                         f"daily_turns = {rng.randint(5, 50)}\n")
        t.write_text("config/applets.toml", "".join(lines))
        for menu in ("main", "messages", "files", "doors", "goodbye"):
            t.write(f"config/menus/{menu}.ans",
                    ansi_screen(rng, self.pool, rng.randint(1_500, 6_000), sauce=rng.random() < 0.6))
        t.write_text("config/menus/main.toml", "".join(
            f"[[item]]\nkey = \"{k}\"\naction = \"{v}\"\n\n" for k, v in
            (("M", "messages"), ("F", "files"), ("D", "doors"), ("W", "whos_online"), ("G", "goodbye"))))
        t.write_text("config/access/groups.toml", "".join(
            f"[group.{g}]\nlevel = {lvl}\nflags = \"{f}\"\n\n" for g, lvl, f in
            (("guest", 0, ""), ("new", 10, "R"), ("member", 20, "RPD"), ("elite", 50, "RPDU"),
             ("cosysop", 90, "RPDUM"), ("sysop", 100, "*"))))
        users = ["# User accounts (no secrets: hashes are fake)\n"]
        for i, u in enumerate(self.users):
            users.append(f"\n[[user]]\nid = {i + 1}\nhandle = \"{u}\"\n"
                         f"level = {100 if u == self.sysop else rng.choice([10, 20, 20, 50])}\n"
                         f"calls = {rng.randint(1, 5000)}\n"
                         f"pw_hash = \"{rng.randbytes(16).hex()}\"\n")
        t.write_text("config/access/users.toml", "".join(users))
        t.write_text("config/access/ip-blocklist.txt", "".join(
            f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24\n"
            for _ in range(rng.randint(10, 40))))
        for name in ("newuser", "logon", "rules", "goodbye"):
            t.write_text(f"config/text/{name}.txt", text_block(rng, self.pool, rng.randint(300, 3_000)))
        t.write_text("config/protocols.toml",
                     "[zmodem]\ncommand = \"sz -b -e {file}\"\n\n[ymodem]\ncommand = \"sb {file}\"\n\n"
                     "[xmodem]\ncommand = \"sx {file}\"\n")
        t.write_text("config/theme/colors.toml", "".join(
            f"{k} = \"\\u001b[{rng.randint(0, 1)};{rng.randint(30, 37)}m\"\n"
            for k in ("prompt", "header", "text", "highlight", "error", "input")))
        t.write_text("config/filters/badwords.txt", "".join(
            w + "\n" for w in sorted(rng.sample(ASCII_WORDS, 25))))
        for n in range(1, 5):
            t.write_text(f"config/nodes/node{n}.toml",
                         f"node = {n}\nenabled = {str(n < 4).lower()}\ninactivity_timeout_s = {rng.choice([120, 300, 600])}\n")
        t.write("config/keys/ssh_host_ed25519.pub",
                b"ssh-ed25519 " + rng.randbytes(51).hex().encode("ascii")[:68] + b" sysop@bbs\n")

    # ---- boards ---------------------------------------------------------

    def gen_boards(self) -> None:
        rng = self.rng("boards")
        t = self.tree
        names = [b[0] for b in self.boards]
        weights = [b[1] for b in self.boards]
        count = self.p["messages"]
        span = 6 * 365 * 86400
        max_step = max(2, 2 * span // count)
        recent: dict[str, list[tuple[int, str, str, list[str]]]] = {b: [] for b in names}
        now = 0
        for i in range(count):
            mid = i + 1
            board = rng.choices(names, weights)[0]
            now += rng.randint(1, max_step)
            date = iso_date(self.epoch + timedelta(seconds=now))
            sender = self.sysop if board == "announcements" else rng.choice(self.users)
            prev = recent[board]
            reply_to = None
            quote: list[str] = []
            if prev and board != "announcements" and rng.random() < 0.45:
                pid, psubj, pfrom, pfirst = rng.choice(prev)
                reply_to = pid
                subject = psubj if psubj.startswith("Re: ") else "Re: " + psubj
                to = pfrom
                if rng.random() < 0.7:
                    quote = ["> " + line for line in pfirst[: rng.randint(1, 4)]]
                    if rng.random() < 0.2:
                        quote.insert(0, "> > " + rng.choice(self.pool))
            else:
                words = rng.choices(ASCII_WORDS, k=rng.randint(2, 6))
                subject = " ".join(words).capitalize()
                if rng.random() < 0.2:
                    subject += "?"
                to = "All" if rng.random() < 0.7 else rng.choice(self.users)

            if rng.random() < 0.01:
                size = rng.randint(4_096, 60_000)  # JSON and quoting add a few KB
            else:
                size = skew_int(rng, 200, 4_000)
            head = []
            if rng.random() < 0.3:
                head.append(rng.choice(GREETINGS).format(to=to))
                head.append("")
            if quote:
                head.extend(quote)
                head.append("")
            text = text_block(rng, self.pool, max(40, size - sum(len(x) + 1 for x in head)))
            tail = ""
            if rng.random() < 0.4:
                tail = f"\n-- \n{sender}\n"
                if rng.random() < 0.5:
                    tail += rng.choice(TAGLINES) + "\n"
            body = "\n".join(head) + ("\n" if head else "") + text + tail
            msg = {
                "id": mid,
                "board": board,
                "from": sender,
                "to": to,
                "subject": subject,
                "date": date,
                "body": body,
                "reply_to": reply_to,
            }
            t.write_text(f"boards/{board}/{mid}.json",
                         json.dumps(msg, ensure_ascii=False, indent=2) + "\n")
            first = [line for line in text.split("\n") if line][:4]
            prev.append((mid, subject, sender, first))
            if len(prev) > 50:
                del prev[0]

    # ---- applets --------------------------------------------------------

    def gen_applets(self) -> None:
        rng = self.rng("applets")
        # Big assets (large profile): assigned to random applets up front.
        big: dict[str, list[tuple[str, str, bytes, int]]] = {a: [] for a in self.applets}
        big_kinds = [
            ("assets/music/soundtrack.ogg", "random", MAGIC["ogg"]),
            ("assets/video/intro.ogv", "random", MAGIC["ogg"]),
            ("assets/packs/hires-tiles.zip", "random", MAGIC["zip"]),
            ("assets/maps/world.dat", "structured", b"MAP1"),
            ("assets/textures/atlas.bmp", "lowentropy", MAGIC["bmp"]),
            ("assets/sounds/samples.wav", "lowentropy", MAGIC["wav"]),
            ("assets/packs/expansion.zip", "random", MAGIC["zip"]),
            ("assets/db/highscores-archive.dat", "mixed", b"HSDB"),
        ]
        lo, hi = self.p["big_asset_bytes"]
        for k in range(self.p["big_assets"]):
            path, kind, magic = big_kinds[k % len(big_kinds)]
            owner = rng.choice(self.applets)
            if any(b[0] == path for b in big[owner]):
                path = path.replace(".", f"-{k}.", 1)
            big[owner].append((path, kind, magic, rng.randint(lo, hi)))
        for name in self.applets:
            self.gen_applet(self.rng(f"applet:{name}"), name, big[name])

    def gen_applet(self, rng: random.Random, name: str, big) -> None:
        t = self.tree
        root = f"applets/{name}"
        edge = name == "lord"  # the applet that carries every edge case
        lang = rng.choice(("lua", "js"))
        files: list[str] = []

        def put(rel: str, data: bytes) -> None:
            t.write(f"{root}/{rel}", data)
            files.append(rel)

        def put_chunks(rel: str, chunks) -> None:
            t.write_chunks(f"{root}/{rel}", chunks)
            files.append(rel)

        put(f"main.{lang}", code_text(rng, lang, rng.randint(2_000, 20_000)).encode())
        for _ in range(rng.randint(2, 6)):
            mod = rng.choice(CODE_WORDS)
            if f"lib/{mod}.{lang}" not in files:
                put(f"lib/{mod}.{lang}", code_text(rng, lang, rng.randint(1_000, 12_000)).encode())
        if edge or rng.random() < 0.3:
            put("lib/.keep", b"")  # empty file
        for screen in sorted(rng.sample(["title", "help", "hiscores", "gameover", "map", "shop",
                                         "intro", "credits"], rng.randint(2, 5))):
            put(f"ans/{screen}.ans",
                ansi_screen(rng, self.pool, rng.randint(2_000, 12_000), sauce=rng.random() < 0.5))
        put("docs/README.txt",
            (f"{name.upper()}\n{'=' * len(name)}\n\n"
             + text_block(rng, self.pool, rng.randint(1_000, 6_000))).encode())
        put("LICENSE.txt", LICENSE_TEXT)  # identical in every applet (dedup)
        if edge or rng.random() < 0.5:
            put("docs/Read Me First.txt", text_block(rng, self.pool, rng.randint(300, 2_000)).encode())
        langs = I18N_DOCS if edge else rng.sample(I18N_DOCS, rng.randint(0, 2))
        for lang_dir, fname in langs:
            put(f"i18n/{lang_dir}/{fname}",
                (f"[{lang_dir}] {fname}\n\n" + text_block(rng, self.pool, rng.randint(300, 3_000))).encode())
        if edge:
            put("state/game.lock", b"")  # empty file inside an applet
            put("state/Zoë's save (backup).json",
                json.dumps({"owner": "Zoë", "slot": 1}, ensure_ascii=False).encode() + b"\n")
        if edge or rng.random() < 0.3:
            t.mkdir(f"{root}/cache")  # empty directory inside an applet
        if rng.random() < 0.15:
            t.mkdir(f"{root}/logs/archive")  # nested empty directories

        # Regular assets, splitting the applet's asset budget.
        lo, hi = self.p["applet_asset_bytes"]
        kinds = [("images", "png", "random"), ("images", "bmp", "structured"),
                 ("sounds", "ogg", "random"), ("sounds", "wav", "lowentropy"),
                 ("packs", "zip", "random"), ("data", "dat", "mixed")]
        n_assets = rng.randint(3, 9)
        sizes = split_sizes(rng, rng.randint(lo, hi), n_assets)
        for i, size in enumerate(sizes):
            sub, ext, kind = rng.choice(kinds)
            rel = f"assets/{sub}/{rng.choice(CODE_WORDS)}_{i:02d}.{ext}"
            put_chunks(rel, blob(rng, kind, size, MAGIC.get(ext, b"")))
        # Deeply nested tile data: applets/<x>/assets/maps/world/<r>/<z>/tiles/
        if edge or rng.random() < 0.35:
            for r in range(rng.randint(1, 3)):
                for z in range(rng.randint(1, 3)):
                    for tile in range(rng.randint(1, 4)):
                        rel = f"assets/maps/world/region-{r:02d}/zone-{chr(97 + z)}/tiles/{tile:03d}.bin"
                        put_chunks(rel, blob(rng, "structured", rng.randint(512, 16_384), b"TILE"))
        for path, kind, magic, size in big:
            put_chunks(path, blob(rng, kind, size, magic))
        put("config.json", (json.dumps({
            "name": name,
            "difficulty": rng.choice(["easy", "normal", "hard"]),
            "max_players": rng.randint(2, 500),
            "turns_per_day": rng.randint(5, 100),
            "options": {w: rng.randint(0, 1) == 1 for w in sorted(rng.sample(CODE_WORDS, 5))},
        }, indent=2, sort_keys=True) + "\n").encode())
        # Manifest last: lists everything above, in sorted order.
        manifest = {
            "name": name,
            "version": f"{rng.randint(0, 3)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
            "entry": f"main.{lang}",
            "author": rng.choice(self.users),
            "files": sorted(files),
        }
        t.write(f"{root}/manifest.json",
                (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode())

    # ---- per-user applet data -------------------------------------------

    def gen_data(self) -> None:
        rng = self.rng("data")
        t = self.tree
        lo, hi = self.p["data_users"]
        data_applets = [a for a in self.applets if a == "lord" or rng.random() < 0.75]
        for applet in data_applets:
            k = min(len(self.users), rng.randint(lo, hi))
            for ui, user in enumerate(sorted(rng.sample(self.users, k))):
                root = f"data/{applet}/{user.lower()}"
                state = {
                    "user": user,
                    "level": rng.randint(1, 99),
                    "gold": rng.randint(0, 10_000_000),
                    "hp": rng.randint(0, 500),
                    "turns_left": rng.randint(0, 50),
                    "last_played": iso_date(self.epoch + timedelta(seconds=rng.randint(0, 6 * 365 * 86400))),
                    "inventory": rng.choices(CODE_WORDS, k=rng.randint(0, 12)),
                }
                t.write_text(f"{root}/save.json", json.dumps(state, indent=2) + "\n")
                if rng.random() < 0.5:
                    t.write_text(f"{root}/stats.txt", "".join(
                        f"{w}: {rng.randint(0, 9999)}\n" for w in rng.sample(CODE_WORDS, rng.randint(3, 20))))
                if rng.random() < 0.4:
                    kind = rng.choice(("structured", "random", "lowentropy"))
                    t.write_chunks(f"{root}/slot1.sav", blob(rng, kind, rng.randint(1_000, 32_000), b"SAV1"))
                if rng.random() < self.p["data_big_prob"]:
                    t.write_chunks(f"{root}/replay.dat", blob(rng, "mixed", rng.randint(64_000, 512_000), b"RPLY"))
                if rng.random() < 0.15:
                    for m in range(rng.randint(1, 4)):
                        t.write_text(f"{root}/mail/{m:04d}.txt", text_block(rng, self.pool, rng.randint(100, 1_500)))
                if (applet == "lord" and ui == 0) or rng.random() < 0.05:
                    t.mkdir(f"{root}/tmp")  # empty directory inside a user dir

    # ---- uploads ----------------------------------------------------------

    def upload_content(self, rng: random.Random, ext: str, size: int):
        """Chunks of exactly `size` bytes appropriate for an upload extension."""
        assert size <= TEXT_MAX or ext not in TEXT_EXTS
        if ext in ("txt", "nfo", "diz", ""):
            data = text_block(rng, self.pool, size).encode()
            return [data[:size].ljust(size, b"\n")]
        if ext == "ans":
            data = ansi_screen(rng, self.pool, size, sauce=False)
            return [data[:size].ljust(size, b" ")]
        if ext in ("pas", "c", "lua", "js"):
            data = code_text(rng, "lua" if ext == "lua" else "js", size).encode()
            return [data[:size].ljust(size, b"\n")]
        if ext in ("exe", "com"):
            return blob(rng, "structured", size, MAGIC["exe"])
        if ext in ("mod", "s3m", "xm", "iso", "img"):
            return blob(rng, "mixed", size, MAGIC.get(ext, b""))
        if ext in ("mid", "bmp"):
            return blob(rng, "structured", size, MAGIC.get(ext, b""))
        return blob(rng, "random", size, MAGIC.get(ext, b""))

    def gen_uploads(self) -> None:
        rng = self.rng("uploads")
        t = self.tree
        target = self.p["target_bytes"]

        def put(rel: str, size: int) -> None:
            ext = rel.rpartition("/")[2].rpartition(".")[2].lower() if "." in rel.rpartition("/")[2] else ""
            t.write_chunks(rel, self.upload_content(rng, ext, size))

        # Fixed names: spaces, Latin-1/Latin Extended, CJK, Greek, emoji, NFD.
        put("files/warez/Übersicht 2026.txt", rng.randint(2_000, 20_000))
        t.write_text("files/日本語/読んでください.txt",
                     "このファイルはテスト用です。\nダウンロードありがとうございます。\n\n"
                     + text_block(rng, self.pool, rng.randint(500, 5_000)))
        put("files/art/café menu.ans", rng.randint(3_000, 30_000))
        t.write("files/misc/empty file.txt", b"")  # empty upload
        put("files/misc/NFD Cafe\u0301.txt", rng.randint(100, 2_000))  # decomposed é
        put("files/docs/ελληνικά/οδηγός χρήσης.txt", rng.randint(1_000, 8_000))
        put("files/music/mods/Ævintýri – part 1.mod", rng.randint(50_000, 400_000))
        put("files/party/🎉 release pack.zip", rng.randint(20_000, 200_000))
        put("files/utils/archivers/pkzip 2.04g/PKZ204G.EXE", rng.randint(100_000, 300_000))
        put("files/utils/archivers/pkzip 2.04g/README.TXT", rng.randint(1_000, 6_000))
        put("files/incoming/00 README", rng.randint(200, 2_000))
        # The same bytes at two paths: content-addressed dedup must keep both.
        zoe = collect(blob(rng, "random", self.p["mirror_bytes"], MAGIC["zip"]))
        t.write("files/games/dos/rpg/Zoë's Quest (1994).zip", zoe)
        t.write("files/mirror/games/Zoë's Quest (1994).zip", zoe)
        del zoe

        for path, kind, lo, hi in self.p["big_uploads"]:
            t.write_chunks(path, blob(rng, kind, rng.randint(lo, hi),
                                      MAGIC.get(path.rpartition(".")[2], b"")))

        # Upload directories and the extensions found in each.
        dirs = {
            "files/games/dos/rpg": ["zip", "arj", "lzh"],
            "files/games/dos/arcade": ["zip", "exe", "com"],
            "files/games/dos/strategy": ["zip", "arj", "exe"],
            "files/games/amiga": ["lzh", "zip", "mod"],
            "files/utils/archivers": ["zip", "exe", "txt"],
            "files/utils/comm": ["zip", "com", "txt"],
            "files/utils/disk": ["zip", "exe", "img"],
            "files/art/ansi": ["ans", "ans", "zip"],
            "files/art/gif": ["gif", "jpg", "bmp"],
            "files/music/mods": ["mod", "s3m", "xm"],
            "files/music/midi": ["mid", "zip"],
            "files/text/humor": ["txt", "nfo"],
            "files/text/tech": ["txt", "diz", "txt"],
            "files/text/zines": ["txt", "nfo", "zip"],
            "files/source/pascal": ["pas", "zip"],
            "files/source/c": ["c", "zip"],
            "files/incoming": ["zip", "txt", "jpg"],
            "files/images": ["iso", "img", "zip"],
            "files/warez/0day": ["zip", "nfo", "rar"],
            "files/docs/manuals": ["txt", "pdf"],
        }
        dir_names = list(dirs)
        lo, hi = self.p["upload_bytes"]
        seq = 0
        remaining = target - t.bytes
        while remaining > 0:
            d = rng.choice(dir_names)
            ext = rng.choice(dirs[d])
            style = rng.random()
            stem = f"{rng.choice(CODE_WORDS)}{rng.randint(1, 999)}"
            if style < 0.4:
                fname = f"{stem[:8].upper()}.{ext.upper()}"  # 8.3 name
            elif style < 0.8:
                fname = f"{rng.choice(CODE_WORDS)}-{stem}.{ext}"
            else:
                fname = f"{rng.choice(CODE_WORDS).capitalize()} {rng.choice(CODE_WORDS)} {stem}.{ext}"
            seq += 1
            rel = f"{d}/{fname}"
            if rel in t._written:
                rel = f"{d}/{seq:04d} {fname}"
            size = min(remaining, skew_int(rng, lo, hi))
            if ext in TEXT_EXTS:
                size = min(size, TEXT_MAX)  # multi-MB .txt uploads would be odd
            t.write_chunks(rel, self.upload_content(rng, ext, size))
            remaining -= size

    def run(self) -> None:
        self.gen_config()
        self.gen_boards()
        self.gen_applets()
        self.gen_data()
        self.gen_uploads()


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 1 (argparse default is 2 + usage)
        raise GenError(message)


def prepare_out(out: str, force: bool) -> bytes:
    root = os.fsencode(out)
    if os.path.lexists(root):
        if not os.path.isdir(root) or os.path.islink(root):
            raise GenError(f"{out}: exists and is not a directory")
        if os.listdir(root):
            if not force:
                raise GenError(f"{out}: directory is not empty (use --force to replace it)")
            real = os.path.realpath(root)
            home = os.fsencode(os.path.realpath(os.path.expanduser("~")))
            if real in (b"/", home) or os.path.exists(os.path.join(root, b".git")):
                raise GenError(f"{out}: refusing to remove this directory")
            shutil.rmtree(root)
            os.makedirs(root)
    else:
        os.makedirs(root)
    return root.rstrip(b"/") or b"/"


def count_tree(root: bytes) -> tuple[int, int, int]:
    files = dirs = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirs += len(dirnames)
        for f in filenames:
            files += 1
            size += os.lstat(os.path.join(dirpath, f)).st_size
    return files, dirs, size


def main(argv: list[str]) -> int:
    ap = Parser(prog=PROG, description="Generate a deterministic sample BBS tree for bbsync.")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="small",
                    help="small (~20 MB), large (~1 GB), posts (20,000 posts + a 400 MB binary) "
                         "or scale (small posts only); default small")
    ap.add_argument("--messages", type=int, default=None,
                    help="number of board messages (default: the profile's)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--force", action="store_true", help="remove OUT_DIR first if it is not empty")
    ap.add_argument("out_dir", metavar="OUT_DIR")
    args = ap.parse_args(argv)
    if args.seed < 0:
        raise GenError("--seed must be >= 0")
    if args.messages is not None and not 1 <= args.messages <= 10_000_000:
        raise GenError("--messages must be between 1 and 10,000,000")

    start = time.monotonic()
    root = prepare_out(args.out_dir, args.force)
    tree = Tree(root)
    BBSGen(tree, args.profile, args.seed, args.messages).run()
    files, dirs, size = count_tree(root)
    if (files, size) != (tree.files, tree.bytes):
        raise GenError(f"internal error: wrote {tree.files} files/{tree.bytes} B, found {files}/{size}")
    secs = time.monotonic() - start
    what = args.profile if args.messages is None else f"{args.profile} ({args.messages} messages)"
    print(f"generated {what} BBS seed={args.seed}: {files} files, {dirs} dirs, "
          f"{size} bytes in {secs:.1f}s -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except GenError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        sys.exit(130)
