//! Any bytes given to the `.kes` parser give a model or an error, never a panic or an
//! out-of-bounds access; a model that parses also runs. Seed the corpus with real files:
//! `cargo fuzz run parse_kes fuzz/corpus/parse_kes` after copying a few `.kes` there.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = kestrel_runtime::Model::parse(data) {
        // Bounded so the fuzzer does not spend its time on huge arenas.
        if model.arena_bytes() <= 1 << 20 {
            let mut arena = vec![0u8; model.arena_bytes()];
            if let Ok(mut session) = kestrel_runtime::Session::new(&model, &mut arena) {
                session.run();
                let mut logits = vec![0f32; model.classes()];
                let _ = session.logits(&mut logits);
            }
        }
    }
});
