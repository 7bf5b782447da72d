//! After the first frame of a given size, turning a raw camera frame into the model's input
//! allocates nothing: a counting global allocator proves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kestrel_board::frame::{Frame, PixelFormat, RgbConverter};
use kestrel_runtime::kestrel_format::PreprocessInfo;
use kestrel_runtime::preprocess::{preprocess_rgb, scratch_len};

struct Counting;

thread_local! {
    // Per thread: the harness runs other tests, which allocate, on other threads.
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
fn raw_frames_are_converted_and_preprocessed_without_allocating() {
    // The ImageNet policy (shorter side 256, centre 224) on a 640×480 camera.
    let info = PreprocessInfo {
        size: [224, 224],
        resize: 1,
        channel_order: 0,
        resize_shorter: 256,
        scale: 1.0 / 255.0,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    let (w, h) = (640, 480);
    let mut input = vec![0.0f32; 3 * 224 * 224];
    let mut scratch = vec![0.0f32; scratch_len(&info, w, h)];
    let mut converter = RgbConverter::default();
    for format in [
        PixelFormat::Yuyv,
        PixelFormat::I420,
        PixelFormat::Bgr24,
        PixelFormat::Rgb24,
    ] {
        let data: Vec<u8> = (0..format.frame_len(w, h).unwrap())
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut allocations = Vec::new();
        for _ in 0..3 {
            let before = ALLOCATIONS.with(Cell::get);
            let frame = Frame {
                format,
                width: w,
                height: h,
                data: &data,
                origin: "camera",
            };
            let rgb = converter.convert(&frame).unwrap();
            preprocess_rgb(
                &info,
                rgb.rgb,
                rgb.width,
                rgb.height,
                &mut scratch,
                |c, p, v| input[c * 224 * 224 + p] = v,
            )
            .unwrap();
            allocations.push(ALLOCATIONS.with(Cell::get) - before);
        }
        // The converter's buffer may grow on the first frame, never after.
        assert_eq!(&allocations[1..], &[0, 0], "{format}: {allocations:?}");
        assert!(input.iter().all(|v| v.is_finite()));
    }
}
