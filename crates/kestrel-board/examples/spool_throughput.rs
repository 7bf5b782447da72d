//! Spool throughput: how fast results are written to a sink's spool (what the camera loop
//! pays per frame for a remote sink) and, given a broker, how fast a spool that filled
//! during an outage is replayed to it.
//!
//! ```sh
//! cargo run --release -p kestrel-board --example spool_throughput -- [--results N] [--dir DIR] [--mqtt mqtt://127.0.0.1:1883]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kestrel_board::delivery::mqtt::{MqttSettings, MqttSink};
use kestrel_board::delivery::spool::{Spool, SpoolLimits};
use kestrel_board::delivery::{Report, SYNC_PERIOD};

fn main() {
    let mut results = 10_000usize;
    let mut dir = std::env::temp_dir().join(format!("kestrel-spool-bench-{}", std::process::id()));
    let mut mqtt = None;
    let mut sync = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--results" => {
                results = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--results N")
            }
            "--dir" => dir = args.next().expect("--dir DIR").into(),
            "--mqtt" => mqtt = args.next(),
            // What the writes cost with no fsync at all (for comparison).
            "--no-sync" => sync = false,
            other => panic!("unknown argument {other}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let limits = SpoolLimits {
        sync_every: usize::MAX,
        ..SpoolLimits::default()
    };
    let spool =
        Spool::open(&dir, if sync { SpoolLimits::default() } else { limits }).expect("spool");
    // A result line as the board writes it (ResNet-8, top 3): about 400 bytes.
    let line = |frame: usize| {
        format!(
            r#"{{"ts_ms":1796235554251,"device":"cam-07","frame":{frame},"source":"/dev/video0","top":[{{"label":"cat","index":3,"score":0.91}},{{"label":"dog","index":5,"score":0.05}},{{"label":"deer","index":4,"score":0.02}}],"times_ms":{{"capture":0.71,"preprocess":0.31,"inference":2.104}},"model_sha256":"b44ba435d6cc3203e1a2278555d83c33b43599666804c4e51d10c636822b2fa5"}}"#
        )
    };
    let spool = Arc::new(spool);
    // The outbox's sync thread, as in the board.
    let writing = Arc::new(AtomicBool::new(true));
    let syncer = {
        let (spool, writing) = (spool.clone(), writing.clone());
        std::thread::spawn(move || {
            while sync && writing.load(Ordering::Relaxed) {
                std::thread::sleep(SYNC_PERIOD);
                spool.sync().expect("sync");
            }
        })
    };
    let mut each = Vec::with_capacity(results);
    let t0 = Instant::now();
    for i in 0..results {
        let t = Instant::now();
        spool.push(line(i).as_bytes()).expect("push");
        each.push(t.elapsed());
    }
    if sync {
        spool.sync().expect("sync");
    }
    let write = t0.elapsed();
    writing.store(false, Ordering::Relaxed);
    syncer.join().unwrap();
    each.sort();
    let pct = |p: f64| each[((each.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "write: {results} results ({} bytes each) in {:.2} s = {:.0} results/s; in the loop per result p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (synced every {} ms by another thread)",
        line(0).len(),
        write.as_secs_f64(),
        results as f64 / write.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        SYNC_PERIOD.as_millis()
    );
    let Some(url) = mqtt else {
        println!("replay: skipped (pass --mqtt URL of a running broker)");
        return;
    };
    let settings = MqttSettings {
        topic: "kestrel/{device}/bench".into(),
        ..MqttSettings::new(url)
    };
    let sink = MqttSink::new(&settings, "bench").expect("mqtt settings");
    let stop = Arc::new(AtomicBool::new(false));
    let report: Report = Arc::new(|event, error, _| {
        if let Some(e) = error {
            eprintln!("{event}: {e}");
        }
    });
    let t0 = Instant::now();
    let worker = {
        let (spool, stop) = (spool.clone(), stop.clone());
        std::thread::spawn(move || sink.run(&spool, &stop, &report))
    };
    while spool.depth() > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let replay = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    spool.wake();
    worker.join().unwrap();
    println!(
        "replay: {results} results to {} at QoS 1 in {:.2} s = {:.0} results/s",
        settings.url,
        replay.as_secs_f64(),
        results as f64 / replay.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
