//! Embeds a `.kes` model into the board binary when `KESTREL_EMBED_MODEL` names one at
//! build time (`kestrel package --embed` sets it), so that one file is the whole firmware.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KESTREL_EMBED_MODEL");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let code = match std::env::var_os("KESTREL_EMBED_MODEL").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = std::fs::canonicalize(&path).unwrap_or_else(|e| {
                panic!(
                    "KESTREL_EMBED_MODEL={}: {e}",
                    PathBuf::from(&path).display()
                )
            });
            println!("cargo:rerun-if-changed={}", path.display());
            format!(
                "pub static EMBEDDED_MODEL: Option<&[u8]> = Some(include_bytes!({:?}));\n",
                path.display().to_string()
            )
        }
        None => "pub static EMBEDDED_MODEL: Option<&[u8]> = None;\n".to_string(),
    };
    std::fs::write(out.join("embedded_model.rs"), code).expect("write embedded_model.rs");
}
