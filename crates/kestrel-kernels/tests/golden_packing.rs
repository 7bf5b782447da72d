//! A packed weight layout is part of the `.kes` format: the bytes `kestrel compile` wrote
//! yesterday are the bytes a board reads today. For each layout, two fixed convs (a 3×3 stem
//! on RGB with channels off the tile, a deeper one with few channels) are packed and
//! compared with committed files. Changing a layout on purpose means bumping
//! `kestrel_format::VERSION` and re-writing the files: `KESTREL_BLESS=1 cargo test -p
//! kestrel-kernels --features std --test golden_packing`.

use std::path::PathBuf;

use kestrel_kernels::conv::Packing;

/// `(K, OC)`: K = KH·KW·IC.
const CONVS: [(usize, usize); 2] = [(27, 20), (144, 5)];

/// Fixed weights covering the int8 range the compiler writes (−127 … 127).
fn weights(k: usize, oc: usize) -> Vec<i8> {
    (0..k * oc)
        .map(|i| ((i * 37 + 11) % 255) as i32 - 127)
        .map(|v| v as i8)
        .collect()
}

fn golden(packing: Packing, k: usize, oc: usize) -> PathBuf {
    let name = format!("{packing:?}").to_lowercase();
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}_k{k}_oc{oc}.bin"))
}

#[test]
fn packed_bytes_match_the_committed_ones() {
    let bless = std::env::var_os("KESTREL_BLESS").is_some();
    for packing in Packing::ALL {
        for (k, oc) in CONVS {
            let bytes: Vec<u8> = packing
                .pack_weights(&weights(k, oc), k, oc)
                .into_iter()
                .map(|b| b as u8)
                .collect();
            let path = golden(packing, k, oc);
            if bless {
                std::fs::write(&path, &bytes).unwrap();
                continue;
            }
            let want = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (KESTREL_BLESS=1 writes it)", path.display()));
            assert!(
                bytes == want,
                "{packing:?} K={k} OC={oc}: packed bytes differ from {} ({} vs {} bytes): files \
                 on boards would be misread; bump kestrel_format::VERSION and re-bless",
                path.display(),
                bytes.len(),
                want.len()
            );
        }
    }
}
