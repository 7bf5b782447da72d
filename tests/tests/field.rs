//! The board service in the field, end to end: the native `kestrel-rpi5` binary with a
//! real model and real images, delivering to a real MQTT broker (Debian's mosquitto,
//! started here on free loopback ports) and to a local HTTP server that fails at first;
//! the broker stopped and restarted under it, the board killed with results in its spool;
//! systemd's notify socket played by the test; model files replaced while it runs; a soak.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kestrel_e2e::{repo, shared_dir, shared_model, temp_dir};
use kestrel_tools::calibrate::Method;
use kestrel_tools::compile::{self, CompileOptions, Target};
use kestrel_tools::dataset;
use kestrel_tools::synth::{self, Arch, SynthOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The Pi 5 board binary built for this machine (the same code as on the board; natively
/// so that thousands of frames take seconds, not minutes under qemu).
fn board_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(repo())
            .args(["build", "--profile", "host", "-p", "kestrel-rpi5"])
            .env_remove("KESTREL_EMBED_MODEL")
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building kestrel-rpi5 for the host failed"
        );
        repo().join("target/host/kestrel-rpi5")
    })
}

fn compile_to(onnx: &Path, calib_count: usize, target: Target, out: &Path) -> PathBuf {
    let opts = CompileOptions::new(Method::Percentile(99.99), calib_count, target);
    let calib = shared_dir().join("data/cifar10/calib");
    let (bytes, _) = compile::compile(onnx, Some(&calib), None, &opts).unwrap();
    std::fs::write(out, bytes).unwrap();
    out.to_path_buf()
}

/// ResNet-8 (real weights) for the Pi 5, and a second build of it from other
/// calibration images: the same classes and input, other bytes.
fn resnet8_models() -> &'static (PathBuf, PathBuf) {
    static M: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    M.get_or_init(|| {
        let dir = temp_dir("models");
        let onnx = shared_model("resnet8_tiny_cifar10");
        (
            compile_to(&onnx, 20, Target::Rpi5, &dir.join("a.kes")),
            compile_to(&onnx, 40, Target::Rpi5, &dir.join("b.kes")),
        )
    })
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `count` dev images (real JPEGs) in one flat folder.
fn camera_folder(name: &str, count: usize) -> PathBuf {
    let all = dataset::list(&shared_dir().join("data/cifar10/dev")).unwrap();
    let dir = temp_dir(name);
    for (i, img) in dataset::spread(&all, count).iter().enumerate() {
        std::fs::copy(&img.path, dir.join(format!("{i:05}.jpg"))).unwrap();
    }
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// A mosquitto broker on a loopback port, with persistence, so that a subscriber's
/// session and its queued results survive the broker's restart.
struct Broker {
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn new(name: &str) -> Broker {
        let dir = temp_dir(&format!("broker-{name}"));
        // Started as root, mosquitto drops to its own user: let it write its database.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {0}/\nmax_queued_messages 0\nlog_dest file {0}/mosquitto.log\n",
                dir.display()
            ),
        )
        .unwrap();
        Broker {
            port,
            conf,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/setup installs Debian's mosquitto)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "mosquitto did not listen on {port}"
        );
        // Listening, and it is ours (not another process that took the port first).
        let alive = self.child.as_mut().unwrap().try_wait().unwrap().is_none();
        assert!(alive, "mosquitto exited: port {port} taken?");
    }

    /// SIGTERM, so that it saves its sessions, as a broker restarted for an upgrade does.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An MQTT client with a persistent session subscribed at QoS 1: what a fleet's consumer is.
struct Subscriber {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    subscribed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    fn connect(port: u16, id: &str, topic: &str) -> Subscriber {
        use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(opts, 16);
        client.subscribe(topic, QoS::AtLeastOnce).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, subscribed, stop) = (got.clone(), subscribed.clone(), stop.clone());
            let topic = topic.to_string();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connection.recv_timeout(Duration::from_millis(50)) {
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            let v: Value = serde_json::from_slice(&p.payload)
                                .expect("every message is a JSON result");
                            got.lock().unwrap().push((p.topic.clone(), v));
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            subscribed.store(true, Ordering::Relaxed)
                        }
                        Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) if !a.session_present => {
                            let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        // The broker is down: rumqttc reconnects on the next poll.
                        Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                let _ = client.try_disconnect();
            })
        };
        let sub = Subscriber {
            got,
            subscribed,
            stop,
            thread: Some(thread),
        };
        assert!(
            wait_until(Duration::from_secs(10), || sub
                .subscribed
                .load(Ordering::Relaxed)),
            "the test subscriber could not subscribe"
        );
        sub
    }

    fn messages(&self) -> Vec<(String, Value)> {
        self.got.lock().unwrap().clone()
    }

    /// Distinct frame numbers received.
    fn frames(&self) -> BTreeSet<u64> {
        self.messages()
            .iter()
            .map(|(_, v)| v["frame"].as_u64().unwrap())
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The board binary running, its stdout collected line by line.
struct Board {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<Value>>>,
    results_seen: Arc<AtomicU64>,
    reader: Option<JoinHandle<()>>,
}

impl Board {
    fn start(args: &[String], env: &[(&str, String)]) -> Board {
        let mut cmd = Command::new(board_binary());
        cmd.args(args)
            .args(["--threads", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("STATE_DIRECTORY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let results_seen = Arc::new(AtomicU64::new(0));
        let reader = {
            let (lines, results_seen) = (lines.clone(), results_seen.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                    if v.get("top").is_some() {
                        results_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    lines.lock().unwrap().push(v);
                }
            })
        };
        Board {
            child,
            stdin,
            lines,
            results_seen,
            reader: Some(reader),
        }
    }

    fn trigger(&mut self, n: usize) {
        let stdin = self.stdin.as_mut().unwrap();
        for _ in 0..n {
            writeln!(stdin, "go").unwrap();
        }
        stdin.flush().unwrap();
    }

    fn results(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v.get("top").is_some())
            .cloned()
            .collect()
    }

    fn events(&self, name: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == name)
            .cloned()
            .collect()
    }

    fn wait_results(&self, n: u64, limit: Duration) {
        let seen = self.results_seen.clone();
        assert!(
            wait_until(limit, || seen.load(Ordering::Relaxed) >= n),
            "the board printed {} of {n} results; its lines: {:#?}",
            seen.load(Ordering::Relaxed),
            self.lines
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
        );
    }

    fn wait_event(&self, name: &str, count: usize, limit: Duration) {
        assert!(
            wait_until(limit, || self.events(name).len() >= count),
            "no {name} event; lines: {:#?}",
            self.lines
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
        );
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown of any kind.
    fn kill(mut self) -> Vec<Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finish()
    }

    /// SIGTERM and wait for a clean exit.
    fn terminate(mut self) -> Vec<Value> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the board exited with {status}");
        self.finish()
    }

    fn finish(&mut self) -> Vec<Value> {
        drop(self.stdin.take());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn frame_numbers(results: &[Value]) -> Vec<u64> {
    results
        .iter()
        .map(|r| r["frame"].as_u64().unwrap())
        .collect()
}

/// Every result in first-arrival order has a larger frame number than the one before.
fn assert_in_order(msgs: &[(String, Value)]) {
    let mut seen = HashSet::new();
    let mut last = None;
    for (_, v) in msgs {
        let f = v["frame"].as_u64().unwrap();
        if seen.insert(f) {
            assert!(last < Some(f), "frame {f} arrived after {last:?}");
            last = Some(f);
        }
    }
}

#[test]
fn mqtt_delivers_every_result_in_order_through_a_broker_outage_and_a_kill() {
    let (model, _) = resnet8_models();
    let camera = camera_folder("mqtt-camera", 60);
    let spool = temp_dir("mqtt-spool");
    let mut broker = Broker::new("main");
    broker.start();
    let sub = Subscriber::connect(broker.port, "fleet-consumer", "kestrel/#");
    let board_args = args(&[
        "--model",
        model.to_str().unwrap(),
        "--camera",
        &format!("dir:{}", camera.display()),
        "--trigger",
        "stdin",
        "--device",
        "cam-07",
        "--mqtt",
        &broker.url(),
        "--spool",
        spool.to_str().unwrap(),
    ]);
    let mut board = Board::start(&board_args, &[]);
    board.wait_event("sink_connected", 1, Duration::from_secs(20));

    // Broker up: each result arrives, in order, on the device's topic.
    board.trigger(10);
    board.wait_results(10, Duration::from_secs(30));
    assert!(wait_until(Duration::from_secs(10), || sub.frames().len() >= 10));
    let msgs = sub.messages();
    assert!(msgs.iter().all(|(t, _)| t == "kestrel/cam-07/result"));
    assert_in_order(&msgs);
    let sha = sha256_hex(model);
    for r in board.results() {
        assert_eq!(
            (r["device"].as_str(), r["model_sha256"].as_str()),
            (Some("cam-07"), Some(&*sha))
        );
    }

    // Broker down for 15 frames, then back: all of them arrive.
    broker.stop();
    board.trigger(15);
    board.wait_results(25, Duration::from_secs(30));
    board.wait_event("sink_error", 1, Duration::from_secs(10));
    broker.start();
    let printed: BTreeSet<u64> = frame_numbers(&board.results()).into_iter().collect();
    assert!(
        wait_until(Duration::from_secs(30), || sub.frames() == printed),
        "after the outage the subscriber has {} of {} results",
        sub.frames().len(),
        printed.len()
    );
    assert_in_order(&sub.messages());

    // Broker down again, 8 frames spooled, the board SIGKILLed, restarted, broker up.
    broker.stop();
    board.trigger(8);
    board.wait_results(33, Duration::from_secs(30));
    let first_run = board.kill();
    let first_frames = frame_numbers(
        &first_run
            .iter()
            .filter(|v| v.get("top").is_some())
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert_eq!(first_frames.len(), 33);
    let spooled = std::fs::read_dir(spool.join("spool-mqtt")).unwrap().count();
    assert!(
        spooled >= 8,
        "{spooled} results in the spool after the kill"
    );
    let mut board = Board::start(&board_args, &[]);
    broker.start();
    board.wait_event("sink_connected", 1, Duration::from_secs(30));
    let all: BTreeSet<u64> = first_frames.iter().copied().collect();
    assert!(
        wait_until(Duration::from_secs(30), || sub.frames() == all),
        "after the kill the subscriber has {:?} of {:?}; board: {:#?}; spool: {:?}",
        sub.frames(),
        all,
        board.lines.lock().unwrap(),
        std::fs::read_dir(spool.join("spool-mqtt"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    // The restarted board numbers on from where the last one was, never reusing one.
    board.trigger(2);
    board.wait_results(2, Duration::from_secs(30));
    let next = frame_numbers(&board.results());
    assert!(
        next.iter().all(|f| f > first_frames.last().unwrap()),
        "{next:?}"
    );
    assert!(wait_until(Duration::from_secs(10), || sub.frames().len() == 35));
    assert_in_order(&sub.messages());
    let lines = board.terminate();
    let stop = lines
        .iter()
        .find(|v| v["event"] == "stop")
        .expect("a stop event");
    assert_eq!(stop["detail"]["spooled"], 0);
}

#[test]
fn a_full_spool_drops_the_oldest_and_says_so() {
    let (model, _) = resnet8_models();
    let camera = camera_folder("full-camera", 20);
    let dir = temp_dir("full");
    let mut broker = Broker::new("full");
    // The consumer's session exists on the broker before the outage, as in a fleet.
    broker.start();
    drop(Subscriber::connect(
        broker.port,
        "full-consumer",
        "kestrel/#",
    ));
    broker.stop();
    std::fs::write(dir.join("board.toml"), "spool_max_results = 5\n").unwrap();
    let mut board = Board::start(
        &args(&[
            "--config",
            dir.join("board.toml").to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--camera",
            &format!("dir:{}", camera.display()),
            "--trigger",
            "stdin",
            "--device",
            "cam-full",
            "--mqtt",
            &broker.url(),
            "--spool",
            dir.join("state").to_str().unwrap(),
        ]),
        &[],
    );
    board.trigger(12);
    board.wait_results(12, Duration::from_secs(30));
    let dropped: u64 = board
        .events("spool_dropped")
        .iter()
        .map(|e| e["detail"]["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 7);
    assert_eq!(
        board.events("spool_dropped").last().unwrap()["detail"]["dropped_total"],
        7
    );
    broker.start();
    let sub = Subscriber::connect(broker.port, "full-consumer", "kestrel/#");
    let newest: BTreeSet<u64> = frame_numbers(&board.results())[7..]
        .iter()
        .copied()
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || sub.frames() == newest),
        "got {:?}, want the newest five {newest:?}",
        sub.frames()
    );
    board.terminate();
}

/// A webhook that answers 503 to its first `fail_first` requests.
struct WebHook {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicU64>,
}

impl WebHook {
    fn start(fail_first: u64) -> WebHook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        {
            let (bodies, requests) = (bodies.clone(), requests.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let Some(body) = read_request(&mut stream) else {
                        continue;
                    };
                    let n = requests.fetch_add(1, Ordering::Relaxed);
                    let status = if n < fail_first {
                        "503 Service Unavailable"
                    } else {
                        bodies
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        "200 OK"
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                }
            });
        }
        WebHook {
            port,
            bodies,
            requests,
        }
    }
}

/// The body of one HTTP/1.1 request (by its content-length).
fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf[end + 4..end + 4 + len].to_vec());
        }
    }
}

#[test]
fn http_results_are_retried_until_the_server_takes_them() {
    let (model, _) = resnet8_models();
    let camera = camera_folder("http-camera", 10);
    let hook = WebHook::start(3);
    let mut board = Board::start(
        &args(&[
            "--model",
            model.to_str().unwrap(),
            "--camera",
            &format!("dir:{}", camera.display()),
            "--trigger",
            "stdin",
            "--device",
            "cam-http",
            "--http",
            &format!("http://127.0.0.1:{}/hook", hook.port),
            "--spool",
            temp_dir("http-spool").to_str().unwrap(),
        ]),
        &[],
    );
    board.trigger(6);
    board.wait_results(6, Duration::from_secs(30));
    let want = frame_numbers(&board.results());
    assert!(
        wait_until(Duration::from_secs(30), || hook
            .bodies
            .lock()
            .unwrap()
            .len()
            == 6),
        "the hook has {} of 6",
        hook.bodies.lock().unwrap().len()
    );
    let got: Vec<u64> = hook
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(got, want, "in order, each once");
    assert_eq!(hook.requests.load(Ordering::Relaxed), 9);
    assert_eq!(board.events("sink_error").len(), 3);
    board.terminate();
}

#[test]
fn the_watchdog_stops_when_the_loop_hangs() {
    let (model, _) = resnet8_models();
    let dir = temp_dir("watchdog");
    let socket_path = dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // A camera whose read blocks: the process writes nothing for a long time.
    let mut board = Board::start(
        &args(&[
            "--model",
            model.to_str().unwrap(),
            "--camera",
            "pipe:mjpeg:sleep 20",
            "--trigger",
            "stdin",
        ]),
        &[
            ("NOTIFY_SOCKET", socket_path.display().to_string()),
            ("WATCHDOG_USEC", "600000".into()),
        ],
    );
    let receive = |window: Duration| {
        let end = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while Instant::now() < end {
            if let Ok(n) = systemd.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        }
        got
    };
    let pings = |msgs: &[String]| {
        msgs.iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    };
    // Waiting for a trigger is not a hang: READY, then a ping every 300 ms.
    let mut buf = [0u8; 1024];
    let ready = wait_until(Duration::from_secs(30), || {
        systemd
            .recv(&mut buf)
            .is_ok_and(|n| String::from_utf8_lossy(&buf[..n]).contains("READY=1"))
    });
    assert!(ready, "no READY=1 from the board");
    let idle = receive(Duration::from_millis(1500));
    assert!(pings(&idle) >= 3, "{idle:?}");
    assert!(
        idle.iter().any(|m| m.contains("STATUS=frames 0")),
        "{idle:?}"
    );
    // A frame whose capture never returns: after half the watchdog time, no more pings.
    board.trigger(1);
    let hanging = receive(Duration::from_millis(1000));
    assert!(
        hanging.iter().any(|m| m.contains("STATUS=hung")),
        "{hanging:?}"
    );
    let after = receive(Duration::from_millis(1500));
    assert_eq!(pings(&after), 0, "pings after the hang: {after:?}");
    board.kill();
}

#[test]
fn a_replaced_model_takes_over_within_one_frame_and_bad_ones_are_refused() {
    let (a, b) = resnet8_models();
    let dir = temp_dir("swap");
    let model = dir.join("model.kes");
    std::fs::copy(a, &model).unwrap();
    // A model of another input size, and one compiled for x86-64.
    let other_shape = {
        let mut opts = SynthOptions::new(Arch::ResNet20);
        opts.input_size = 40;
        opts.classes = 10;
        let onnx = dir.join("resnet20-40px.onnx");
        synth::write(&synth::build(&opts).unwrap(), &onnx).unwrap();
        compile_to(&onnx, 4, Target::Rpi5, &dir.join("40px.kes"))
    };
    let for_x86 = compile_to(
        &shared_model("resnet8_tiny_cifar10"),
        20,
        Target::X86_64,
        &dir.join("x86.kes"),
    );
    let camera = camera_folder("swap-camera", 30);
    let mut board = Board::start(
        &args(&[
            "--model",
            model.to_str().unwrap(),
            "--camera",
            &format!("dir:{}", camera.display()),
            "--trigger",
            "stdin",
        ]),
        &[],
    );
    let (sha_a, sha_b) = (sha256_hex(a), sha256_hex(b));
    assert_ne!(sha_a, sha_b);
    board.trigger(2);
    board.wait_results(2, Duration::from_secs(30));
    // Replaced the way a package manager does it: a new file renamed over the old.
    let replace = |from: &Path| {
        let tmp = dir.join("model.kes.new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, &model).unwrap();
    };
    replace(b);
    board.trigger(1);
    board.wait_results(3, Duration::from_secs(30));
    let results = board.results();
    assert_eq!(results[1]["model_sha256"], *sha_a);
    assert_eq!(results[2]["model_sha256"], *sha_b, "the very next frame");
    let swapped = board.events("model_swapped");
    assert_eq!(swapped.len(), 1);
    assert_eq!(swapped[0]["detail"]["previous_sha256"], *sha_a);

    // Three bad files: each refused with its reason, model B runs on.
    let truncated = dir.join("truncated.kes");
    let bytes = std::fs::read(a).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut seen = 3;
    for (bad, reason) in [
        (&truncated, "not a valid .kes model"),
        (&other_shape, "takes input"),
        (&for_x86, "another CPU family"),
    ] {
        replace(bad);
        board.trigger(1);
        seen += 1;
        board.wait_results(seen, Duration::from_secs(30));
        let refused = board.events("model_refused");
        let last = refused.last().expect("a model_refused event");
        assert!(
            last["error"].as_str().unwrap().contains(reason),
            "{reason}: {last}"
        );
        assert_eq!(board.results().last().unwrap()["model_sha256"], *sha_b);
    }
    assert_eq!(board.events("model_refused").len(), 3);
    // An unchanged file is not read again, unless SIGHUP asks for it.
    board.trigger(1);
    board.wait_results(seen + 1, Duration::from_secs(30));
    assert_eq!(board.events("model_refused").len(), 3);
    let _ = Command::new("kill")
        .args(["-HUP", &board.pid().to_string()])
        .status();
    board.trigger(1);
    board.wait_results(seen + 2, Duration::from_secs(30));
    let refused = board.events("model_refused").len();
    assert_eq!(refused, 4, "SIGHUP re-reads the file");
    replace(a);
    board.trigger(1);
    board.wait_results(seen + 3, Duration::from_secs(30));
    assert_eq!(board.results().last().unwrap()["model_sha256"], *sha_a);
    board.terminate();
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// 20,000 frames from a camera process that dies every 200 frames, to a broker restarted
/// every 4 seconds: nothing lost, memory and descriptors flat.
#[test]
fn soak_twenty_thousand_frames_through_camera_faults_and_broker_restarts() {
    const FRAMES: u64 = 20_000;
    const CAMERA_RUN: usize = 200;
    let (model, _) = resnet8_models();
    let camera = camera_folder("soak-camera", CAMERA_RUN);
    let spool = temp_dir("soak-spool");
    let mut broker = Broker::new("soak");
    broker.start();
    let sub = Subscriber::connect(broker.port, "soak-consumer", "kestrel/#");
    let board = Board::start(
        &args(&[
            "--model",
            model.to_str().unwrap(),
            "--camera",
            &format!("pipe:mjpeg:cat {}/*.jpg", camera.display()),
            "--trigger",
            "continuous",
            "--device",
            "soak",
            "--mqtt",
            &broker.url(),
            "--spool",
            spool.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ]),
        &[],
    );
    let pid = board.pid();
    let t0 = Instant::now();
    board.wait_results(1000, Duration::from_secs(120));
    let (rss_1k, fds_1k) = (proc_status_kib(pid, "VmRSS:"), open_fds(pid));
    let mut restarts = 0;
    let mut rss_samples = vec![(1000, rss_1k)];
    let mut last_restart = Instant::now();
    let done = |board: &Board| board.results_seen.load(Ordering::Relaxed) >= FRAMES;
    while !done(&board) {
        assert!(t0.elapsed() < Duration::from_secs(900), "soak too slow");
        std::thread::sleep(Duration::from_millis(50));
        let n = board.results_seen.load(Ordering::Relaxed);
        if n / 1000 != rss_samples.len() as u64 {
            rss_samples.push((n, proc_status_kib(pid, "VmRSS:")));
        }
        if last_restart.elapsed() > Duration::from_secs(4) {
            broker.stop();
            std::thread::sleep(Duration::from_millis(300));
            broker.start();
            restarts += 1;
            last_restart = Instant::now();
        }
    }
    let (rss_20k, fds_20k) = (proc_status_kib(pid, "VmRSS:"), open_fds(pid));
    println!("soak: RSS (frames, KiB) {rss_samples:?}");
    let elapsed = t0.elapsed();
    let metrics = {
        let addr = board.events("start")[0]["detail"]["metrics"]
            .as_str()
            .expect("the start event names the metrics address")
            .to_string();
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    // Everything spooled is delivered before the board is stopped (a stop leaves the
    // rest in the spool for the next start).
    let spool_files = || {
        std::fs::read_dir(spool.join("spool-mqtt"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || spool_files() == 0),
        "{} results still spooled",
        spool_files()
    );
    let lines = board.terminate();
    let results: Vec<Value> = lines
        .iter()
        .filter(|v| v.get("top").is_some())
        .cloned()
        .collect();
    let printed: BTreeSet<u64> = frame_numbers(&results).into_iter().collect();
    assert_eq!(printed.len(), results.len(), "frame numbers are unique");
    let delivered_in = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || sub
            .frames()
            .is_superset(&printed)),
        "lost: {} of {}",
        printed.difference(&sub.frames()).count(),
        printed.len()
    );
    let received = sub.messages().len();
    let camera_errors = lines
        .iter()
        .filter(|v| v["event"] == "camera_error")
        .count();
    println!(
        "soak: {} results in {:.1} s ({:.0}/s), {} camera faults, {} broker restarts; \
         delivered {} distinct, {} messages received ({} duplicates), lost 0; \
         RSS {} KiB at 1k frames, {} KiB at {}k; fds {} -> {}; subscriber complete {:.1} s after stop",
        results.len(),
        elapsed.as_secs_f64(),
        results.len() as f64 / elapsed.as_secs_f64(),
        camera_errors,
        restarts,
        sub.frames().len(),
        received,
        received - sub.frames().len(),
        rss_1k,
        rss_20k,
        results.len() / 1000,
        fds_1k,
        fds_20k,
        delivered_in.elapsed().as_secs_f64()
    );
    assert!(
        restarts >= 2 && camera_errors >= 10,
        "the soak had its faults"
    );
    // The allocator and the connection buffers settle in the first thousands of frames (one
    // step of 80 KiB was seen near 6k); a leak keeps growing. So the bound is on the second
    // half: 128 KiB over 10,000 frames is 13 bytes a frame, far below one leaked result (~200).
    let rss_10k = rss_samples
        .iter()
        .find(|(n, _)| *n >= FRAMES / 2)
        .map(|(_, kib)| *kib)
        .expect("an RSS sample at half way");
    assert!(
        rss_20k <= rss_10k + 128,
        "resident memory grew from {rss_10k} KiB at half way to {rss_20k} KiB at the end"
    );
    assert!(
        rss_20k as f64 <= rss_1k as f64 * 1.10,
        "resident memory grew from {rss_1k} KiB to {rss_20k} KiB"
    );
    // A camera process or a broker connection may be between two lives at either reading.
    assert!(
        fds_20k <= fds_1k + 3,
        "descriptors grew from {fds_1k} to {fds_20k}"
    );
    let frames_total = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kestrel_frames_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("kestrel_frames_total in the metrics");
    assert!(frames_total >= FRAMES, "{frames_total}");
}
