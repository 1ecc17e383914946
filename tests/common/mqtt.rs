//! MQTT for the tests: a client that publishes and collects what its subscriptions
//! deliver, a Mosquitto of the test's own on a free port, and TLS certificates for both.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{TestDir, free_port, run, temp_dir};

/// An MQTT client: publish, and receive what its subscriptions deliver.
pub struct Mqtt {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// Connection events: CONNACK, SUBACK and UNSUBACK.
    acks: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        // Otherwise the event loop reconnects on its own, with the same client id.
        self.task.abort();
    }
}

impl Mqtt {
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Mqtt {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(5));
        // Up to weir's own default limit (128 KiB), not rumqttc's 10 KiB.
        opts.set_max_packet_size(128 * 1024, 128 * 1024);
        let (client, eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(poll(eventloop, tx, ack_tx));
        tokio::time::timeout(Duration::from_secs(10), acks.recv())
            .await
            .expect("MQTT connection within 10s");
        Mqtt {
            client,
            rx,
            acks: tokio::sync::Mutex::new(acks),
            task,
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.acks.lock().await.recv())
            .await
            .expect("SUBACK within 10s");
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&self, filter: &str) {
        self.client.unsubscribe(filter).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.acks.lock().await.recv())
            .await
            .expect("UNSUBACK within 10s");
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Publishes `payload` to `topic` until `watcher` receives a message, within 10 s, and
    /// returns that message: weir subscribes to an external broker when a rule is
    /// installed, so the first publishes may find no subscriber.
    pub async fn publish_until_seen(
        &self,
        topic: &str,
        payload: &str,
        watcher: &mut Mqtt,
    ) -> (String, Value) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.publish(topic, payload).await;
            if let Some(got) = watcher.next(1).await {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing on {topic} came back through the broker"
            );
        }
    }

    /// The next message, within `secs` seconds.
    pub async fn next(&mut self, secs: u64) -> Option<(String, Value)> {
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(secs), self.rx.recv())
            .await
            .ok()??;
        let v = serde_json::from_slice(&payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&payload).into_owned()));
        Some((topic, v))
    }
}

async fn poll(
    mut el: EventLoop,
    tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
    acks: mpsc::UnboundedSender<()>,
) {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_))) => {
                let _ = acks.send(());
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send((p.topic, p.payload.to_vec())).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A Mosquitto broker on a free port, stopped on drop.
pub struct Mosquitto {
    child: Child,
    pub addr: SocketAddr,
    _dir: TestDir,
}

impl Mosquitto {
    /// A Mosquitto with one anonymous listener.
    pub async fn start() -> Mosquitto {
        let port = free_port();
        Self::start_with(
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .await
    }

    /// A Mosquitto with the given configuration; `port` is the one to wait for.
    pub async fn start_with(port: u16, config: &str) -> Mosquitto {
        let bin = ["mosquitto", "/usr/sbin/mosquitto"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("-h")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .expect("mosquitto is installed (scripts/deps.sh installs it)");
        let dir = temp_dir("mosquitto");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("persistence false\n{config}")).unwrap();
        let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Mosquitto {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with
/// the openssl command. Returns the directory holding ca.pem, server.pem/key, client.pem/key.
pub fn make_certs() -> TestDir {
    let dir = temp_dir("certs");
    let d = |f: &str| dir.join(f).display().to_string();
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=weir test CA",
            "-keyout",
            &d("ca.key"),
            "-out",
            &d("ca.pem"),
        ]));
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=weir-{who}"),
            ])
            .args([
                "-keyout",
                &d(&format!("{who}.key")),
                "-out",
                &d(&format!("{who}.csr")),
            ]));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .args([
                "-in",
                &d(&format!("{who}.csr")),
                "-CA",
                &d("ca.pem"),
                "-CAkey",
                &d("ca.key"),
            ])
            .args([
                "-extfile",
                &d(&format!("{who}.ext")),
                "-out",
                &d(&format!("{who}.pem")),
            ]));
    }
    // Mosquitto drops root privileges before it reads its key: let it.
    for key in ["server.key", "client.key"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir
}
