//! The Prometheus text endpoint: `GET /metrics` (or `/`) on a local port.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, Server};

use super::counters::Counters;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An HTTP server for [`Counters::prometheus`] on its own thread. Dropping it stops the
/// thread and closes the port.
pub struct MetricsServer {
    server: Arc<Server>,
    closing: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (`127.0.0.1:9464`; port 0 picks a free one, see
    /// [`MetricsServer::local_addr`]).
    pub fn start(addr: &str, counters: Arc<Counters>) -> io::Result<MetricsServer> {
        let server = Server::http(addr).map_err(|e| match e.downcast::<io::Error>() {
            Ok(e) => *e,
            Err(e) => io::Error::other(format!("metrics endpoint {addr}: {e}")),
        })?;
        let local = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("metrics endpoint is not on an IP address"))?;
        let server = Arc::new(server);
        let closing = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, closing) = (server.clone(), closing.clone());
            std::thread::Builder::new()
                .name("kestrel-metrics".into())
                .spawn(move || serve(&server, &closing, &counters))?
        };
        Ok(MetricsServer {
            server,
            closing,
            addr: local,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &Server, closing: &AtomicBool, counters: &Counters) {
    loop {
        match server.recv() {
            Ok(request) => respond(request, counters),
            // `unblock` reads as an error too.
            Err(_) if closing.load(Ordering::Relaxed) => return,
            // A failed accept (out of descriptors): go on, a little later.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

fn respond(request: Request, counters: &Counters) {
    let path = request.url().split('?').next().unwrap_or("");
    let known = path == "/metrics" || path == "/";
    let response = match request.method() {
        Method::Get | Method::Head if known => {
            let header = Header::from_bytes("Content-Type", CONTENT_TYPE).expect("valid header");
            Response::from_string(counters.prometheus()).with_header(header)
        }
        Method::Get | Method::Head => Response::from_string("not found\n").with_status_code(404),
        _ => Response::from_string("method not allowed\n").with_status_code(405),
    };
    // The client may have gone; nothing to do about it.
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::super::counters::tests::{parse_exposition, sample_counters};
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// A raw HTTP/1.1 request; the status code, the headers (lower-cased names) and the body.
    fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("end of headers");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap();
        let code = status.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        (code, headers, body.to_string())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn metrics_over_http() {
        let counters = Arc::new(sample_counters());
        let server = MetricsServer::start("127.0.0.1:0", counters.clone()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let (code, headers, body) = http(addr, "GET", "/metrics");
        assert_eq!(code, 200, "{body}");
        let ctype = header(&headers, "content-type").unwrap();
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        let m = parse_exposition(&body);
        assert_eq!(m["kestrel_frames_total"], 120.0);
        assert_eq!(m["kestrel_spool_depth"], 4.0);
        assert_eq!(m["kestrel_model_refused_total"], 6.0);
        assert!(m["process_open_fds"] > 0.0);
        assert!(m["process_resident_memory_bytes"] > 0.0);

        // Live values, at `/` too.
        counters.frames.inc();
        let (code, _, body) = http(addr, "GET", "/?x=1");
        assert_eq!(code, 200);
        assert_eq!(parse_exposition(&body)["kestrel_frames_total"], 121.0);

        let (code, _, _) = http(addr, "GET", "/metricsx");
        assert_eq!(code, 404);
        let (code, _, _) = http(addr, "POST", "/metrics");
        assert_eq!(code, 405);

        // tiny_http's accept thread lets the port go just after the drop.
        drop(server);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_ok() {
            assert!(std::time::Instant::now() < deadline, "the port stays open");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_bad_address_is_an_error() {
        let counters = Arc::new(Counters::default());
        assert!(MetricsServer::start("not an address", counters.clone()).is_err());
        let first = MetricsServer::start("127.0.0.1:0", counters.clone()).unwrap();
        let taken = first.local_addr().to_string();
        let err = MetricsServer::start(&taken, counters).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
