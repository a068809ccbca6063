//! Structured fuzzing of the GGUF parser: headers built from random counts, lengths, value types,
//! dimensions, tensor types and offsets. Whatever the input, parsing returns Ok or Err — never a
//! panic, an abort, an absurd allocation or a hang — and whatever parses is safe to read.

use proptest::prelude::*;
use rllama_core::gguf::GgufFile;

#[derive(Debug, Clone)]
enum Piece {
    U32(u32),
    U64(u64),
    Str(u64, Vec<u8>),
    Bytes(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        (0u32..40).prop_map(Piece::U32),
        any::<u32>().prop_map(Piece::U32),
        (0u64..64).prop_map(Piece::U64),
        any::<u64>().prop_map(Piece::U64),
        (0u64..20, proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(n, b)| Piece::Str(n, b)),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Bytes),
    ]
}

fn render(version: u32, n_tensors: u64, n_kv: u64, pieces: &[Piece]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    for p in pieces {
        match p {
            Piece::U32(v) => b.extend_from_slice(&v.to_le_bytes()),
            Piece::U64(v) => b.extend_from_slice(&v.to_le_bytes()),
            Piece::Str(n, s) => {
                b.extend_from_slice(&n.to_le_bytes());
                b.extend_from_slice(s);
            }
            Piece::Bytes(x) => b.extend_from_slice(x),
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn hostile_headers_never_panic(
        version in prop_oneof![Just(2u32), Just(3u32), any::<u32>()],
        n_tensors in prop_oneof![0u64..4, any::<u64>()],
        n_kv in prop_oneof![0u64..6, any::<u64>()],
        pieces in proptest::collection::vec(piece(), 0..40),
    ) {
        let bytes = render(version, n_tensors, n_kv, &pieces);
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            for t in &f.tensors {
                let data = f.tensor_data(t);
                prop_assert_eq!(data.len(), t.nbytes);
            }
        }
    }
}
