//! Fuzz target for the embedded broker: random sessions over real TCP connections (a
//! CONNECT of either version, or garbage, then PUBLISH, SUBSCRIBE, UNSUBSCRIBE, PUBREL,
//! PINGREQ packets with random topics, filters, packet ids and QoS, malformed lengths and
//! random bytes). After every session the broker must still accept a well-behaved client,
//! and nothing in it may have panicked. Runs for `FUZZ_SECONDS` (1 by default).
//!
//! Longer runs (see docs/security.md):
//! `FUZZ_SECONDS=300 cargo test --release --workspace --test fuzz_mqtt -- --nocapture`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::Broker;
use weir_connectors::mqtt::embedded::Limits;

#[path = "../../tests/common/mqtt_bytes.rs"]
mod mqtt_bytes;
use mqtt_bytes::{connect_v4, frame, str_field};

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone)]
enum Packet {
    Publish {
        topic: String,
        qos: u8,
        pkid: u16,
        payload: Vec<u8>,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PubRel(u16),
    Ping,
    /// A packet whose remaining length says more or less than follows.
    Lying {
        kind: u8,
        said: usize,
        body: Vec<u8>,
    },
    Garbage(Vec<u8>),
}

impl Packet {
    fn encode(&self) -> Vec<u8> {
        match self {
            Packet::Publish {
                topic,
                qos,
                pkid,
                payload,
            } => {
                let mut body = str_field(topic);
                if *qos > 0 {
                    body.extend(pkid.to_be_bytes());
                }
                body.extend(payload);
                frame(0x30 | (qos << 1), &body, body.len())
            }
            Packet::Subscribe { pkid, filters } => {
                let mut body = pkid.to_be_bytes().to_vec();
                for (f, q) in filters {
                    body.extend(str_field(f));
                    body.push(*q);
                }
                frame(0x82, &body, body.len())
            }
            Packet::Unsubscribe { pkid, filters } => {
                let mut body = pkid.to_be_bytes().to_vec();
                for f in filters {
                    body.extend(str_field(f));
                }
                frame(0xa2, &body, body.len())
            }
            Packet::PubRel(pkid) => frame(0x62, &pkid.to_be_bytes(), 2),
            Packet::Ping => vec![0xc0, 0],
            Packet::Lying { kind, said, body } => frame(*kind, body, *said),
            Packet::Garbage(b) => b.clone(),
        }
    }
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "+", "#", "", "$SYS", "plant", "ü", "\0"]),
            0..8
        )
        .prop_map(|l| l.join("/")),
        "\\PC{0,20}",
        (1usize..400).prop_map(|n| vec!["x"; n].join("/")),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        4 => (topic(), 0u8..4, any::<u16>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(topic, qos, pkid, payload)| Packet::Publish { topic, qos, pkid, payload }),
        2 => (any::<u16>(), prop::collection::vec((topic(), 0u8..4), 0..4))
            .prop_map(|(pkid, filters)| Packet::Subscribe { pkid, filters }),
        1 => (any::<u16>(), prop::collection::vec(topic(), 0..3))
            .prop_map(|(pkid, filters)| Packet::Unsubscribe { pkid, filters }),
        1 => any::<u16>().prop_map(Packet::PubRel),
        1 => Just(Packet::Ping),
        1 => (any::<u8>(), 0usize..300_000, prop::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(kind, said, body)| Packet::Lying { kind, said, body }),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Packet::Garbage),
    ]
}

/// A CONNECT: MQTT 3.1.1, MQTT 5, or random bytes.
fn connect() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => ("[a-z0-9]{0,8}", any::<bool>(), any::<u16>()).prop_map(|(id, clean, keep_alive)| {
            let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, if clean { 2 } else { 0 }];
            body.extend(keep_alive.to_be_bytes());
            body.extend(str_field(&id));
            frame(0x10, &body, body.len())
        }),
        2 => "[a-z0-9]{0,8}".prop_map(|id| {
            let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 30, 0];
            body.extend(str_field(&id));
            frame(0x10, &body, body.len())
        }),
        1 => prop::collection::vec(any::<u8>(), 0..32),
    ]
}

async fn session(addr: std::net::SocketAddr, hello: &[u8], packets: &[Packet]) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let mut bytes = hello.to_vec();
    for p in packets {
        bytes.extend(p.encode());
    }
    let _ = s.write_all(&bytes).await;
    let _ = s.shutdown().await;
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Whether a well-behaved MQTT 3.1.1 client gets its CONNACK.
async fn healthy(addr: std::net::SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(&connect_v4("probe")).await.is_err() {
        return false;
    }
    let mut ack = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack)).await,
        Ok(Ok(_)) if ack == [0x20, 2, 0, 0]
    )
}

#[test]
fn broker_sessions() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        hook(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let secs: f64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let addr = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let broker = Broker::with_limits(tx, Arc::new(Metrics::new()), Limits::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(broker.serve(listener, CancellationToken::new()));
        addr
    });
    let strategy = (connect(), prop::collection::vec(packet(), 0..12));
    let mut runner = TestRunner::default();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut cases = 0;
    while Instant::now() < deadline {
        let (hello, packets) = strategy.new_tree(&mut runner).unwrap().current();
        rt.block_on(session(addr, &hello, &packets));
        let ok = rt.block_on(healthy(addr));
        let panics = PANICS.load(Ordering::SeqCst);
        assert!(
            ok && panics == 0,
            "after this session the broker {} ({panics} panics):\nCONNECT {hello:?}\n{packets:#?}",
            if ok { "answers" } else { "does not answer" }
        );
        cases += 1;
    }
    eprintln!("broker_sessions: {cases} sessions in {secs}s");
}
