//! weir-conns: idle device connections against weir's embedded broker and against
//! Mosquitto, in the same run: memory per connection (the server's resident memory with N
//! connections open, less its memory before) and connect rate (N MQTT 3.1.1 CONNECTs
//! answered, `--parallel` at a time). The connections come from several loopback source
//! addresses (127.0.0.2, 127.0.0.3, ...), so that N may pass the ports of one address.
//!
//! Needs N + a few open files in each process: `ulimit -n` above N (scripts/bench.sh raises
//! it).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use weir_benches::harness::{Killed, free_port, rss_kib, wait_port, weir_metric};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weir-conns",
    about = "Idle MQTT connections: memory per connection and connect rate, weir's embedded broker beside Mosquitto"
)]
struct Args {
    /// The weir binary to start.
    #[arg(long, default_value = "target/release/weir")]
    weir: PathBuf,
    /// Connections to hold open.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Loopback source addresses to spread them over (127.0.0.2 onwards).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// CONNECTs in flight at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// Keep-alive the clients ask for, in seconds.
    #[arg(long, default_value_t = 600)]
    keep_alive: u16,
}

/// An MQTT 3.1.1 CONNECT with a clean session.
fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    body.extend(keep_alive.to_be_bytes());
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

/// Opens `args.connections` connections to `server` and waits for each CONNACK; returns
/// them (to hold) and the time it took.
async fn connect_all(args: &Args, server: SocketAddr, tag: &str) -> (Vec<TcpStream>, Duration) {
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.parallel));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(args.sources)) as u8);
        let packet = connect_packet(&format!("{tag}-{i}"), args.keep_alive);
        tasks.push(tokio::spawn(async move {
            let socket = TcpSocket::new_v4().expect("a socket");
            socket
                .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
                .expect("a source port");
            let mut s = socket.connect(server).await.expect("connects");
            s.write_all(&packet).await.unwrap();
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).await.expect("a CONNACK");
            assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK accepted");
            drop(permit);
            s
        }));
    }
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    (conns, start.elapsed())
}

struct Measured {
    kib_before: u64,
    kib_after: u64,
    took: Duration,
}

/// Measures a server; returns the connections, still open: the server is to be stopped
/// first, so that the closed connections wait out TIME_WAIT on its side (its port), not
/// on the harness's source ports, which the next server's connections need.
async fn measure(
    args: &Args,
    pid: u32,
    server: SocketAddr,
    tag: &str,
) -> (Measured, Vec<TcpStream>) {
    wait_port(server).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib_before = rss_kib(pid);
    let (conns, took) = connect_all(args, server, tag).await;
    // Let the server settle (buffers grown for the CONNECT shrink back, if they do).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kib_after = rss_kib(pid);
    let m = Measured {
        kib_before,
        kib_after,
        took,
    };
    (m, conns)
}

fn print(name: &str, args: &Args, m: &Measured) {
    let per_conn =
        (m.kib_after.saturating_sub(m.kib_before) * 1024) as f64 / args.connections as f64;
    let rate = args.connections as f64 / m.took.as_secs_f64();
    println!(
        "{name}: {n} idle connections: {per_conn:.0} bytes each (resident {b} -> {a} KiB); connect rate {rate:.0}/s ({t:.2} s)",
        n = args.connections,
        b = m.kib_before,
        a = m.kib_after,
        t = m.took.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("weir-conns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\n"),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "mosquitto"]
        .into_iter()
        .find(|b| std::path::Path::new(b).exists() || *b == "mosquitto")
        .unwrap();
    let mosquitto = Killed(
        Command::new(bin)
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (scripts/deps.sh installs it)"),
    );
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let (m, conns) = measure(&args, mosquitto.0.id(), server, "mosq").await;
    print("mosquitto", &args, &m);
    drop(mosquitto);
    drop(conns);

    let mqtt = free_port();
    let http = free_port();
    std::fs::create_dir_all(dir.join("queries")).unwrap();
    let weir = Killed(
        Command::new(&args.weir)
            .args(["serve", "--auth", "off", "--log", "warn"])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args([
                "--mqtt-max-connections",
                &(args.connections + 100).to_string(),
            ])
            .args(["--data-dir", dir.join("weir").to_str().unwrap()])
            .args(["--queries-dir", dir.join("queries").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir starts"),
    );
    let server = SocketAddr::from(([127, 0, 0, 1], mqtt));
    let (w, conns) = measure(&args, weir.0.id(), server, "weir").await;
    print("weir", &args, &w);
    // How many of them weir holds parked (without a task): all of them, when idle.
    let http = SocketAddr::from(([127, 0, 0, 1], http));
    let parked = tokio::task::spawn_blocking(move || {
        weir_metric(http, "weir_broker_connections_parked").unwrap_or(-1.0)
    })
    .await
    .unwrap();
    println!("weir: {parked} of them parked");
    drop(weir);
    drop(conns);

    let bytes = |m: &Measured| m.kib_after.saturating_sub(m.kib_before) as f64;
    let rate = |m: &Measured| args.connections as f64 / m.took.as_secs_f64();
    println!(
        "ratio weir/mosquitto: memory per connection {:.2}, connect rate {:.2}",
        bytes(&w) / bytes(&m).max(1.0),
        rate(&w) / rate(&m)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
