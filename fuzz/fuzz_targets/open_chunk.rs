//! Sealed chunks under a fixed key (the key of `protocol/tests/vectors/chunks.json`,
//! `00 01 .. 1f`, so the vector chunks are useful seeds): opening never panics, and an opened
//! uncompressed chunk is exactly what sealing its plaintext gives. The input
//! is also sealed as a plaintext, with and without compression, and must
//! open to itself, and opened as a meta blob (and its plaintext decoded).

#![no_main]

use bbsync_fuzz::{check_error, ok_or_check};
use bbsync_protocol::{
    ChunkCipher, ChunkId, Compression, ContentKey, ErrorKind, ObjectMeta, chunk::CHUNK_MAX,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cipher = ChunkCipher::new(&ContentKey::from_bytes(std::array::from_fn(|i| i as u8)));

    // As stored bytes.
    let by_id = cipher.open(&ChunkId::of(data), data);
    let verified = cipher.open_verified(data);
    match (&by_id, &verified) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            check_error(a);
            assert_eq!(a.kind(), b.kind());
        }
        _ => panic!("open and open_verified disagree on a chunk that matches its id"),
    }
    assert!(
        cipher
            .open(&ChunkId([0; 32]), data)
            .is_err_and(|e| e.kind() == ErrorKind::HashMismatch)
    );
    if let Ok(plaintext) = verified {
        assert!(plaintext.len() <= CHUNK_MAX as usize);
        if data[1] == 0 {
            let again = cipher.seal(&plaintext, Compression::None).expect("reseal");
            assert_eq!(again.bytes, data, "an opened chunk is what sealing gives");
        }
    }

    // As a sealed meta blob, and as a meta plaintext.
    if let Some(meta) = ok_or_check(cipher.open_meta(data)) {
        assert_eq!(cipher.seal_meta(&meta).expect("reseal meta"), data);
        let _ = ok_or_check(ObjectMeta::decode(&meta));
    }
    if let Some(m) = ok_or_check(ObjectMeta::decode(data)) {
        // (postcard accepts non-minimal varints, so `data` itself need not be
        // canonical; the blob is sealed, nothing is derived from its bytes.)
        assert_eq!(ObjectMeta::decode(&m.encode()).expect("re-encoded meta"), m);
    }
    if let Some(sealed) = ok_or_check(cipher.seal_meta(data)) {
        assert_eq!(cipher.open_meta(&sealed).expect("open sealed meta"), data);
    }

    // As a plaintext.
    for compression in [Compression::None, Compression::Zstd(1)] {
        let Some(sealed) = ok_or_check(cipher.seal(data, compression)) else {
            assert!(data.len() > CHUNK_MAX as usize);
            continue;
        };
        assert_eq!(sealed.id, ChunkId::of(&sealed.bytes));
        assert_eq!(
            cipher.open(&sealed.id, &sealed.bytes).expect("open sealed"),
            data
        );
        assert_eq!(cipher.seal(data, compression).expect("seal again"), sealed);
    }
});
