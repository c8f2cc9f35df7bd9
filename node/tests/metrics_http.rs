//! The metrics endpoint over real loopback TCP: scrapes, wrong paths and methods,
//! garbage, oversized and slow requests, the connection bound, and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mule::metrics::{
    CONTENT_TYPE, MAX_CONNECTIONS, MAX_HEAD, Metrics, READ_TIMEOUT, RejectReason, Transport, serve,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running endpoint; dropping `stop` shuts it down.
struct Endpoint {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start(metrics: Arc<Metrics>) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, metrics, async move {
        let _ = stopped.await;
    }));
    Endpoint {
        addr,
        stop: Some(stop),
        task,
    }
}

/// A parsed HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` raw, reads until the server closes, parses the answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send request");
    read_answer(&mut s).await
}

async fn read_answer(s: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes within 10 s")
        .expect("read answer");
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8(raw.to_vec()).expect("answer is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("head ends with a blank line");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header has a colon");
            (k.to_string(), v.trim().to_string())
        })
        .collect::<Vec<_>>();
    let answer = Answer {
        status,
        headers,
        body: body.to_string(),
    };
    let len: usize = answer
        .header("Content-Length")
        .expect("Content-Length")
        .parse()
        .expect("numeric Content-Length");
    assert_eq!(len, answer.body.len(), "Content-Length matches the body");
    assert_eq!(answer.header("Connection"), Some("close"));
    answer
}

const GET: &[u8] =
    b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n";

/// The value of one sample line, e.g. `mule_contacts_total`.
fn sample(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn scrape_shows_current_values() {
    let metrics = Arc::new(Metrics::new());
    metrics.add_bytes_sent(Transport::Tcp, 4242);
    metrics.inc_piece_rejected(RejectReason::UnknownBundle);
    let ep = start(metrics.clone()).await;

    let a = exchange(ep.addr, GET).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("Content-Type"), Some(CONTENT_TYPE));
    assert_eq!(
        a.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        sample(&a.body, "mule_bytes_sent_total{transport=\"tcp\"}"),
        Some(4242)
    );
    assert_eq!(
        sample(&a.body, "mule_bytes_sent_total{transport=\"bluetooth\"}"),
        Some(0)
    );
    assert_eq!(
        sample(
            &a.body,
            "mule_pieces_rejected_total{reason=\"unknown_bundle\"}"
        ),
        Some(1)
    );
    assert!(a.body.contains("# TYPE mule_bytes_sent_total counter\n"));

    // Values are read at each scrape.
    metrics.add_bytes_sent(Transport::Tcp, 8);
    metrics.set_neighbours(2);
    let a = exchange(ep.addr, b"GET /metrics?ignored=1 HTTP/1.0\r\n\r\n").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        sample(&a.body, "mule_bytes_sent_total{transport=\"tcp\"}"),
        Some(4250)
    );
    assert_eq!(sample(&a.body, "mule_neighbours"), Some(2));

    // HEAD: same headers, no body.
    let mut s = TcpStream::connect(ep.addr).await.unwrap();
    s.write_all(b"HEAD /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n"),
        "{text}"
    );
    drop(ep);
}

#[tokio::test]
async fn wrong_path_is_404_and_wrong_method_is_405() {
    let ep = start(Arc::new(Metrics::new())).await;
    let a = exchange(ep.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.status, 404);
    let a = exchange(ep.addr, b"GET /metricsx HTTP/1.1\r\n\r\n").await;
    assert_eq!(a.status, 404);
    let a = exchange(
        ep.addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 405);
    assert_eq!(a.header("Allow"), Some("GET, HEAD"));
    // Still serving.
    assert_eq!(exchange(ep.addr, GET).await.status, 200);
}

#[tokio::test]
async fn garbage_gets_400_and_the_server_keeps_serving() {
    let metrics = Arc::new(Metrics::new());
    metrics.inc_contacts();
    let ep = start(metrics).await;

    // Binary junk with a blank line: 400.
    let mut junk: Vec<u8> = (0u8..=255).rev().collect();
    junk.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exchange(ep.addr, &junk).await.status, 400);
    // A TLS ClientHello-like start, then EOF: 400 for what arrived.
    let mut s = TcpStream::connect(ep.addr).await.unwrap();
    s.write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_answer(&mut s).await.status, 400);
    // Text that is not HTTP.
    assert_eq!(exchange(ep.addr, b"hello there\n\n").await.status, 400);
    // Connect and close at once: no answer, nothing breaks.
    drop(TcpStream::connect(ep.addr).await.unwrap());
    // An endless head: 431 once it passes the limit, intact although the server did not
    // read all of it (the client keeps its side open; the server closes after draining).
    let mut s = TcpStream::connect(ep.addr).await.unwrap();
    let mut long = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    long.resize(MAX_HEAD + 100, b'a');
    s.write_all(&long).await.unwrap();
    assert_eq!(read_answer(&mut s).await.status, 431);
    // The same with the client closing its side after sending.
    let mut s = TcpStream::connect(ep.addr).await.unwrap();
    s.write_all(&long).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_answer(&mut s).await.status, 431);

    let a = exchange(ep.addr, GET).await;
    assert_eq!(a.status, 200);
    assert_eq!(sample(&a.body, "mule_contacts_total"), Some(1));
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_head_gets_408() {
    let ep = start(Arc::new(Metrics::new())).await;
    let mut s = TcpStream::connect(ep.addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    // Real time: the node's tokio has no test-util, so this test takes READ_TIMEOUT (5 s).
    let t0 = std::time::Instant::now();
    let a = read_answer(&mut s).await;
    assert_eq!(a.status, 408);
    assert!(
        t0.elapsed() >= READ_TIMEOUT - Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn connections_beyond_the_bound_wait_for_a_free_slot() {
    let ep = start(Arc::new(Metrics::new())).await;
    // Fill every slot with a client that sends nothing.
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(TcpStream::connect(ep.addr).await.unwrap());
    }
    // The listen backlog is FIFO, so this client is accepted after all of the above.
    let mut waiting = TcpStream::connect(ep.addr).await.unwrap();
    waiting.write_all(GET).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "answered although all {MAX_CONNECTIONS} slots were busy"
    );

    // Free one slot: the waiting client is served.
    drop(idle.pop());
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), waiting.read_to_end(&mut raw))
        .await
        .expect("served once a slot frees up")
        .unwrap();
    assert_eq!(parse_answer(&raw).status, 200);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let mut ep = start(Arc::new(Metrics::new())).await;
    assert_eq!(exchange(ep.addr, GET).await.status, 200);
    // An idle connection must not hold shutdown up.
    let _idle = TcpStream::connect(ep.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    ep.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), &mut ep.task)
        .await
        .expect("serve returns promptly after shutdown")
        .expect("serve did not panic");
    // The listener is gone with it.
    assert!(TcpStream::connect(ep.addr).await.is_err());
}
