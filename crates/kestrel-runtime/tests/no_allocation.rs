//! `Session::run` allocates nothing: a counting global allocator proves it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // Per thread: the test harness runs other tests, which allocate, on other threads.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn run_allocates_nothing() {
    let bytes = common::tiny_model().to_bytes();
    let model = kestrel_runtime::Model::parse(&bytes).unwrap();
    let mut arena = vec![0u8; model.arena_bytes()];
    let image: Vec<f32> = (0..6 * 6 * 3).map(|i| (i as f32 / 50.0) - 1.0).collect();
    let mut logits = [0f32; 3];
    let rgb: Vec<u8> = (0..9 * 7 * 3).map(|i| (i * 13 % 256) as u8).collect();
    let mut scratch = [0f32; 7 * 6 * 3];
    let before = ALLOCATIONS.with(Cell::get);
    let mut session = kestrel_runtime::Session::new(&model, &mut arena).unwrap();
    session.set_input_nchw_f32(&image).unwrap();
    session.run();
    // Straight from camera RGB too (bilinear 9×7 → 6×6 needs scratch, given by the caller).
    session.set_input_rgb(&rgb, 9, 7, &mut scratch).unwrap();
    session.run();
    session.logits(&mut logits).unwrap();
    let after = ALLOCATIONS.with(Cell::get);
    assert_eq!(after - before, 0, "the session allocated");
    assert!(
        logits.iter().any(|&l| l != 0.0),
        "the model computed something: {logits:?}"
    );
}

#[test]
fn a_small_arena_is_refused_with_the_size_needed() {
    let bytes = common::tiny_model().to_bytes();
    let model = kestrel_runtime::Model::parse(&bytes).unwrap();
    let mut arena = vec![0u8; 100];
    match kestrel_runtime::Session::new(&model, &mut arena) {
        Err(e) => assert_eq!(
            e.to_string(),
            "arena too small: the model needs 464 bytes, 100 were given"
        ),
        Ok(_) => panic!("a 100-byte arena was accepted"),
    }
}
