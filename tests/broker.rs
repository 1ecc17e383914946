//! The embedded broker, seen from MQTT clients: QoS, subscriptions, takeover, MQTT 3.1.1
//! and MQTT 5.

mod common;

use std::time::Duration;

use common::mqtt_bytes::{connect_v4, frame, str_field};
use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

#[tokio::test]
async fn qos2_publishes_are_processed_once_and_subscriptions_follow_unsubscribe() {
    let dir = temp_dir("broker-qos");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({"sql": "SELECT n FROM 'q2/in'", "actions": [{"republish": {"topic": "q2/out", "qos": 1}}]});
    assert_eq!(weir.put_rule("q2", rule).await.0, 201);
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("q2/#").await;
    let device = Mqtt::connect(weir.mqtt, "device").await;
    for n in 0..5 {
        device
            .client
            .publish("q2/in", QoS::ExactlyOnce, false, format!(r#"{{"n": {n}}}"#))
            .await
            .unwrap();
    }
    // The watcher sees both the inputs (q2/in) and the outputs (q2/out).
    let mut inputs = 0;
    let mut outputs = Vec::new();
    while inputs + outputs.len() < 10 {
        let (topic, v) = watcher.next(10).await.expect("ten messages");
        if topic == "q2/out" {
            outputs.push(v["n"].as_i64().unwrap());
        } else {
            inputs += 1;
        }
    }
    assert_eq!(outputs, [0, 1, 2, 3, 4]);
    assert!(
        watcher.next(1).await.is_none(),
        "nothing is delivered twice"
    );
    weir.wait_metric(r#"weir_rule_messages_matched_total{rule="q2"}"#, 5.0)
        .await;
    assert_eq!(
        weir.metric("weir_broker_messages_received_total").await,
        5.0
    );

    watcher.unsubscribe("q2/#").await;
    device.publish("q2/in", r#"{"n": 9}"#).await;
    assert!(watcher.next(1).await.is_none());
    weir.wait_metric(r#"weir_rule_messages_matched_total{rule="q2"}"#, 6.0)
        .await;
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let dir = temp_dir("broker-takeover");
    let weir = Weir::start(&dir, &[]).await;
    let connect = || async {
        let mut opts = MqttOptions::new("same-id", weir.mqtt.ip().to_string(), weir.mqtt.port());
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(opts, 10);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.unwrap() {
                break;
            }
        }
        (client, el)
    };
    let (_first, mut first_el) = connect().await;
    let (_second, _second_el) = connect().await;
    // The broker closes the first connection (MQTT 3.1.1 §3.1.4).
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if first_el.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the first connection was not closed");
}

/// An MQTT 5 client of weir's embedded broker, and what it received.
struct Mqtt5 {
    client: rumqttc::v5::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
    connack: rumqttc::v5::mqttbytes::v5::ConnAck,
}

impl Mqtt5 {
    async fn connect(addr: std::net::SocketAddr, client_id: &str) -> Self {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
        let opts = Options5::new(client_id, addr.ip().to_string(), addr.port());
        let (client, mut el) = Client5::new(opts, 10);
        let connack = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match el.poll().await {
                    Ok(Event5::Incoming(P5::ConnAck(c))) => return c,
                    Ok(_) => {}
                    Err(e) => panic!("MQTT 5 connection refused: {e}"),
                }
            }
        })
        .await
        .expect("a CONNACK");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                if let Event5::Incoming(P5::Publish(p)) = ev {
                    let _ = tx.send(p);
                }
            }
        });
        Self {
            client,
            rx,
            connack,
        }
    }

    async fn next(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("a message within 10s")
            .expect("the connection is open")
    }
}

#[tokio::test]
async fn mqtt5_properties_reach_the_rules_and_mqtt5_subscribers() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let dir = temp_dir("broker-v5");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({
        "sql": "SELECT v, get_mqtt_property('content_type') AS ct, get_mqtt_property('format_indicator') AS f, \
                get_mqtt_property('response_topic') AS rt, get_mqtt_property('correlation_data') AS cd, \
                get_user_properties('tag') AS tags, get_user_properties() AS all, clientid() AS c FROM 'v5/in'",
        "actions": [{"republish": {"topic": "v5/out/${get_user_properties('site')[0]}"}}]
    });
    let (status, body) = weir.put_rule("v5", rule).await;
    assert_eq!(status, 201, "{body}");
    // An MQTT 3.1.1 watcher sees the rule's output; an MQTT 5 one sees the input with its
    // properties, forwarded by the broker.
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("v5/out/#").await;
    let mut sub5 = Mqtt5::connect(weir.mqtt, "sub5").await;
    sub5.client
        .subscribe("v5/in", QoS5::AtLeastOnce)
        .await
        .unwrap();
    let device = Mqtt5::connect(weir.mqtt, "dev-5").await;
    // A sent-back SUBACK is not visible here: wait until the subscription routes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".to_owned()),
        response_topic: Some("v5/reply".to_owned()),
        correlation_data: Some(bytes::Bytes::from_static(b"req-7")),
        user_properties: vec![
            ("tag".to_owned(), "a".to_owned()),
            ("site".to_owned(), "north".to_owned()),
            ("tag".to_owned(), "b".to_owned()),
        ],
        ..Default::default()
    };
    device
        .client
        .publish_with_properties(
            "v5/in",
            QoS5::AtLeastOnce,
            false,
            r#"{"v": 1}"#,
            props.clone(),
        )
        .await
        .unwrap();

    let (topic, v) = watcher.next(10).await.expect("the rule's output");
    assert_eq!(topic, "v5/out/north");
    assert_eq!(
        v,
        json!({
            "v": 1, "ct": "application/json", "f": "UTF8_DATA", "rt": "v5/reply",
            "cd": "cmVxLTc=", "tags": ["a", "b"], "c": "dev-5",
            "all": [{"tag": "a"}, {"site": "north"}, {"tag": "b"}]
        })
    );
    let forwarded = sub5.next().await;
    assert_eq!(&forwarded.topic[..], b"v5/in");
    let got = forwarded.properties.expect("properties forwarded");
    assert_eq!(got.content_type, props.content_type);
    assert_eq!(got.user_properties, props.user_properties);
    assert_eq!(got.correlation_data, props.correlation_data);

    // A message without properties: format_indicator says so, the rest is Undefined.
    device
        .client
        .publish("v5/in", QoS5::AtLeastOnce, false, r#"{"v": 2}"#)
        .await
        .unwrap();
    // No `site` user property: the republish topic's template is empty.
    let (topic, v) = watcher.next(10).await.expect("the rule's output");
    assert_eq!(topic, "v5/out/");
    assert_eq!(v, json!({"v": 2, "f": "UNSPECIFIED_BYTES", "c": "dev-5"}));
}

#[tokio::test]
async fn an_mqtt5_client_without_a_client_id_is_given_one() {
    let dir = temp_dir("broker-v5-anon");
    let weir = Weir::start(&dir, &[]).await;
    let anon = Mqtt5::connect(weir.mqtt, "").await;
    let props = anon.connack.properties.expect("CONNACK properties");
    let assigned = props.assigned_client_identifier.expect("an assigned id");
    assert!(assigned.starts_with("weir-anon-"), "{assigned}");
    // What the broker offers: shared subscriptions and subscription identifiers
    // (absent means available), topic aliases and a receive maximum.
    assert_eq!(props.shared_subscription_available, None);
    assert_eq!(props.subscription_identifiers_available, None);
    assert_eq!(props.topic_alias_max, Some(10));
    assert_eq!(props.receive_max, Some(100));
    // MQTT 3.1.1 clients are still served on the same port.
    Mqtt::connect(weir.mqtt, "v4-client").await;
}

/// `alice`'s password is `secret`, as written by `mosquitto_passwd -b` (Mosquitto 2.0.11).
const PASSWORDS: &str = "alice:$7$101$9FFuGn8T1Ff1GSxw$pP1r1ORPPoBEPkUIuj9P/2oe0Vszf+l2Afy84Oeuyb/ien/kaUnXy6ByKD+NWV7YxWFVAPt9Zs+ZzKKzqKQMkw==\n";

/// A client of weir's embedded broker with these credentials: its CONNACK's code.
async fn connack_code(
    weir: &Weir,
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), rumqttc::ConnectReturnCode> {
    let mut opts = MqttOptions::new(client_id, weir.mqtt.ip().to_string(), weir.mqtt.port());
    if let Some((user, password)) = credentials {
        opts.set_credentials(user, password);
    }
    connack_of(opts).await
}

/// A client with these options: connected, or the code it was refused with.
async fn connack_of(
    opts: MqttOptions,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), rumqttc::ConnectReturnCode> {
    let (client, mut el) = AsyncClient::new(opts, 10);
    match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok((client, el)),
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => Err(code),
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn rules_see_the_proven_username_and_the_address() {
    let dir = temp_dir("broker-principal");
    let passwords = dir.join("passwords");
    std::fs::write(&passwords, PASSWORDS).unwrap();
    let weir = Weir::start(&dir, &["--mqtt-password-file", passwords.to_str().unwrap()]).await;
    let rule = json!({
        "sql": "SELECT principal() AS p, sourceip() AS ip, clientid() AS c FROM 'who'",
        "actions": [{"republish": {"topic": "who/out"}}]
    });
    assert_eq!(weir.put_rule("who", rule).await.0, 201);
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("who/out").await;
    let (client, mut el) = connack_code(&weir, "dev-9", Some(("alice", "secret")))
        .await
        .expect("alice is let in");
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    client
        .publish("who", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    let (_, v) = watcher.next(10).await.expect("output");
    assert_eq!(v, json!({"p": "alice", "ip": "127.0.0.1", "c": "dev-9"}));
    // An anonymous client (allowed on loopback) has no principal.
    let anonymous = Mqtt::connect(weir.mqtt, "dev-10").await;
    anonymous.publish("who", "{}").await;
    let (_, v) = watcher.next(10).await.expect("output");
    assert_eq!(v, json!({"ip": "127.0.0.1", "c": "dev-10"}));
}

#[tokio::test]
async fn a_password_file_lets_its_users_in_and_refuses_the_rest() {
    let dir = temp_dir("broker-passwords");
    let passwords = dir.join("passwords");
    std::fs::write(&passwords, PASSWORDS).unwrap();
    let weir = Weir::start(
        &dir,
        &[
            "--mqtt-password-file",
            passwords.to_str().unwrap(),
            "--mqtt-allow-anonymous",
            "false",
        ],
    )
    .await;
    use rumqttc::ConnectReturnCode as Code;
    assert!(
        connack_code(&weir, "a", Some(("alice", "secret")))
            .await
            .is_ok()
    );
    assert_eq!(
        connack_code(&weir, "b", Some(("alice", "Secret")))
            .await
            .err(),
        Some(Code::BadUserNamePassword)
    );
    assert_eq!(
        connack_code(&weir, "c", Some(("mallory", "secret")))
            .await
            .err(),
        Some(Code::BadUserNamePassword)
    );
    assert_eq!(
        connack_code(&weir, "d", None).await.err(),
        Some(Code::NotAuthorized)
    );
    // A refused client cannot take over a connected client's id either.
    assert_eq!(
        connack_code(&weir, "a", Some(("alice", "wrong")))
            .await
            .err(),
        Some(Code::BadUserNamePassword)
    );
    // MQTT 5 clients get MQTT 5's reason code.
    let mut opts = rumqttc::v5::MqttOptions::new("e", weir.mqtt.ip().to_string(), weir.mqtt.port());
    opts.set_credentials("alice", "nope");
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
    match el.poll().await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => assert_eq!(
            code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::BadUserNamePassword
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    weir.wait_metric(
        r#"weir_broker_connections_refused_total{reason="bad_credentials"}"#,
        4.0,
    )
    .await;
    assert_eq!(
        weir.metric(r#"weir_broker_connections_refused_total{reason="anonymous"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_acl_confines_each_client_to_its_topics() {
    let dir = temp_dir("broker-acl");
    let passwords = dir.join("passwords");
    std::fs::write(&passwords, PASSWORDS).unwrap();
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "# devices write their own telemetry and read their own commands\n\
         pattern write devices/%c/telemetry\n\
         pattern read devices/%c/commands\n\
         user alice\n\
         topic read devices/#\n\
         topic deny devices/secret/#\n",
    )
    .unwrap();
    let weir = Weir::start(
        &dir,
        &[
            "--mqtt-password-file",
            passwords.to_str().unwrap(),
            "--mqtt-acl-file",
            acl.to_str().unwrap(),
        ],
    )
    .await;
    let rule = json!({"sql": "SELECT clientid() AS c FROM 'devices/+/telemetry'", "actions": []});
    assert_eq!(weir.put_rule("telemetry", rule).await.0, 201);

    // alice reads every device's telemetry but no secret.
    let (alice, mut alice_el) = connack_code(&weir, "dash", Some(("alice", "secret")))
        .await
        .unwrap();
    alice
        .subscribe("devices/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    alice
        .subscribe("devices/secret/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut granted = Vec::new();
    while granted.len() < 2 {
        if let Event::Incoming(Packet::SubAck(ack)) = alice_el.poll().await.unwrap() {
            granted.push(ack.return_codes[0]);
        }
    }
    assert_eq!(
        granted,
        [
            rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce),
            rumqttc::SubscribeReasonCode::Failure
        ]
    );
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = alice_el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let _ = tx.send(p.topic);
            }
        }
    });

    // A device may not read others' topics, and may write only its own telemetry.
    let mut device = Mqtt::connect(weir.mqtt, "dev-1").await;
    device
        .client
        .subscribe("devices/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    device.subscribe("devices/dev-1/commands").await;
    device.publish("devices/dev-2/telemetry", "{}").await;
    device.publish("devices/secret/telemetry", "{}").await;
    device.publish("devices/dev-1/telemetry", "{}").await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap(),
        Some("devices/dev-1/telemetry".to_owned()),
        "only what the device may write reaches its readers"
    );
    weir.wait_metric(r#"weir_rule_messages_matched_total{rule="telemetry"}"#, 1.0)
        .await;
    weir.wait_metric(
        r#"weir_broker_messages_dropped_total{reason="not_authorized"}"#,
        2.0,
    )
    .await;
    assert_eq!(
        weir.metric(r#"weir_broker_subscriptions_refused_total{reason="not_authorized"}"#)
            .await,
        2.0
    );
    // alice may not write, so nothing reaches the device's commands.
    alice
        .publish("devices/dev-1/commands", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    assert!(device.next(1).await.is_none());
    assert_eq!(
        weir.metric(r#"weir_rule_messages_matched_total{rule="telemetry"}"#)
            .await,
        1.0
    );
}

/// One client's 9,000-level filter or topic (which once exhausted a thread's stack in the
/// topic trie) is refused: the filter with a failed SUBACK, the topic by closing the
/// connection; weir and its other clients carry on.
#[tokio::test]
async fn a_topic_of_thousands_of_levels_is_refused_and_weir_carries_on() {
    let dir = temp_dir("broker-deep");
    let weir = Weir::start(&dir, &[]).await;
    let deep = vec!["d"; 9000].join("/");

    let mut opts = MqttOptions::new("deep", weir.mqtt.ip().to_string(), weir.mqtt.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 10);
    client
        .subscribe(format!("{deep}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let suback = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = events.poll().await.unwrap() {
                return ack;
            }
        }
    })
    .await
    .expect("a SUBACK");
    assert_eq!(
        suback.return_codes,
        [rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure]
    );
    client
        .publish(deep.clone(), QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Err(e) => return e,
                Ok(Event::Incoming(Packet::PubAck(_))) => panic!("the publish was taken"),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the connection closes");
    eprintln!("the deep publisher's connection ended: {closed}");

    // weir is still there, and other clients work.
    assert_eq!(weir.request(reqwest::Method::GET, "/healthz").await.0, 200);
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("ok/#").await;
    let device = Mqtt::connect(weir.mqtt, "device").await;
    device.publish("ok/1", r#"{"n": 1}"#).await;
    assert_eq!(watcher.next(10).await.unwrap().0, "ok/1");
}

/// A client with room for large packets; returns it with its event loop's incoming
/// publishes and the end of its connection.
async fn big_client(
    addr: std::net::SocketAddr,
    id: &str,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    tokio::task::JoinHandle<String>,
) {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = AsyncClient::new(opts, 10);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p.payload.to_vec());
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("connected")
        .unwrap();
    (client, rx, task)
}

/// The embedded broker takes packets of at most 128 KiB unless configured otherwise: a
/// larger PUBLISH closes its connection, and MQTT 5 clients are told the limit.
#[tokio::test]
async fn packets_over_the_limit_close_the_connection() {
    let dir = temp_dir("broker-max-packet");
    let weir = Weir::start(&dir, &[]).await;
    let (watcher, mut seen, _w) = big_client(weir.mqtt, "watcher").await;
    watcher.subscribe("big/#", QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (device, _, ended) = big_client(weir.mqtt, "device").await;
    let fits = vec![b'a'; 100 * 1024];
    device
        .publish("big/1", QoS::AtLeastOnce, false, fits.clone())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), fits.len());
    device
        .publish("big/2", QoS::AtLeastOnce, false, vec![b'b'; 200 * 1024])
        .await
        .unwrap();
    let why = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the connection closes")
        .unwrap();
    eprintln!("the device's connection ended: {why}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), seen.recv())
            .await
            .is_err(),
        "the large publish was not delivered"
    );

    // MQTT 5 clients are told the limit.
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
    let (_c, mut events) = Client5::new(
        Options5::new("v5", weir.mqtt.ip().to_string(), weir.mqtt.port()),
        10,
    );
    let ack = loop {
        if let Event5::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(a)) =
            events.poll().await.unwrap()
        {
            break a;
        }
    };
    assert_eq!(ack.properties.unwrap().max_packet_size, Some(128 * 1024));
    drop(weir);

    // Configured larger, the same publish goes through.
    let dir = temp_dir("broker-max-packet-2");
    let weir = Weir::start(&dir, &["--mqtt-max-packet-size", "1048576"]).await;
    let (watcher, mut seen, _w) = big_client(weir.mqtt, "watcher").await;
    watcher.subscribe("big/#", QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (device, _, _d) = big_client(weir.mqtt, "device").await;
    device
        .publish("big/2", QoS::AtLeastOnce, false, vec![b'b'; 200 * 1024])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 200 * 1024);
}

/// A bare MQTT 3.1.1 client on a TCP socket: it sends exactly what a test asks, and reads
/// only when asked, as a slow or hostile device would.
struct Raw(tokio::net::TcpStream);

impl Raw {
    async fn connect(addr: std::net::SocketAddr, client_id: &str) -> Raw {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&connect_v4(client_id)).await.unwrap();
        let mut raw = Raw(s);
        assert_eq!(
            raw.read_packet().await,
            Some(vec![0x20, 2, 0, 0]),
            "CONNACK"
        );
        raw
    }

    async fn subscribe(&mut self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        let mut body = pkid.to_be_bytes().to_vec();
        for f in filters {
            body.extend(str_field(f));
            body.push(1);
        }
        self.0
            .write_all(&frame(0x82, &body, body.len()))
            .await
            .unwrap();
        let ack = self.read_packet().await.expect("SUBACK");
        assert_eq!(ack[0], 0x90, "{ack:?}");
        ack[4..].to_vec()
    }

    async fn publish(&mut self, topic: &str, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut body = str_field(topic);
        body.extend_from_slice(payload);
        self.0
            .write_all(&frame(0x30, &body, body.len()))
            .await
            .unwrap();
    }

    /// The next packet, whole; `None` once the broker closed the connection.
    async fn read_packet(&mut self) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 1];
        if self.0.read_exact(&mut head).await.is_err() {
            return None;
        }
        let mut packet = vec![head[0]];
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            self.0.read_exact(&mut b).await.ok()?;
            packet.push(b[0]);
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).await.ok()?;
        packet.extend(body);
        Some(packet)
    }

    /// Reads until the broker closes the connection; false if it does not within `secs`.
    async fn closed_within(&mut self, secs: u64) -> bool {
        tokio::time::timeout(Duration::from_secs(secs), async {
            while self.read_packet().await.is_some() {}
        })
        .await
        .is_ok()
    }
}

/// Past `--mqtt-max-connections` a connection is closed before its CONNECT is read, and
/// counted; once a client leaves, a new one gets in.
#[tokio::test]
async fn connections_past_the_limit_are_closed() {
    let dir = temp_dir("broker-max-conns");
    let weir = Weir::start(&dir, &["--mqtt-max-connections", "2"]).await;
    let a = Raw::connect(weir.mqtt, "a").await;
    let _b = Raw::connect(weir.mqtt, "b").await;
    let mut third = Raw(tokio::net::TcpStream::connect(weir.mqtt).await.unwrap());
    assert!(
        third.closed_within(10).await,
        "the third connection is closed"
    );
    weir.wait_metric(
        r#"weir_broker_connections_refused_total{reason="max_connections"}"#,
        1.0,
    )
    .await;
    drop(a);
    weir.wait_metric_eq("weir_broker_connections", 1.0).await;
    let _c = Raw::connect(weir.mqtt, "c").await;
}

/// Past `--mqtt-max-subscriptions` a filter gets the failure return code (0x80); one the
/// client holds already may be subscribed again.
#[tokio::test]
async fn subscriptions_past_the_limit_are_refused() {
    let dir = temp_dir("broker-max-subs");
    let weir = Weir::start(&dir, &["--mqtt-max-subscriptions", "2"]).await;
    let mut c = Raw::connect(weir.mqtt, "subs").await;
    assert_eq!(c.subscribe(1, &["a/#", "b/#", "c/#"]).await, [1, 1, 0x80]);
    assert_eq!(c.subscribe(2, &["a/#"]).await, [1]);
    assert_eq!(c.subscribe(3, &["d"]).await, [0x80]);
    weir.wait_metric(
        r#"weir_broker_subscriptions_refused_total{reason="max_subscriptions"}"#,
        2.0,
    )
    .await;
}

/// Past `--mqtt-max-sessions` a client that would start a new session is refused
/// (CONNACK 3), whether or not the sessions' clients are connected; a client that has a
/// session comes back to it.
#[tokio::test]
async fn sessions_past_the_limit_are_refused() {
    let dir = temp_dir("broker-max-sessions");
    let weir = Weir::start(&dir, &["--mqtt-max-sessions", "2"]).await;
    subscribe_and_vanish(&weir, "away-1", "a/#").await;
    subscribe_and_vanish(&weir, "away-2", "b/#").await;
    weir.wait_metric_eq("weir_broker_connections", 0.0).await;
    assert_eq!(weir.metric("weir_broker_sessions").await, 2.0);
    match connack_code(&weir, "newcomer", None).await {
        Err(code) => assert_eq!(code, rumqttc::ConnectReturnCode::ServiceUnavailable),
        Ok(_) => panic!("a third session is refused"),
    }
    weir.wait_metric(
        r#"weir_broker_connections_refused_total{reason="max_sessions"}"#,
        1.0,
    )
    .await;
    let mut opts = MqttOptions::new("away-1", weir.mqtt.ip().to_string(), weir.mqtt.port());
    opts.set_clean_session(false);
    let (_client, _el) = connack_of(opts)
        .await
        .expect("a client with a session comes back");
    assert_eq!(weir.metric("weir_broker_sessions").await, 2.0);
}

/// A subscriber that stops reading is disconnected once more than
/// `--mqtt-max-queued-bytes` wait for it, instead of holding memory; the other clients
/// and the API carry on.
#[tokio::test]
async fn a_slow_subscriber_is_disconnected() {
    let dir = temp_dir("broker-slow");
    let weir = Weir::start(&dir, &["--mqtt-max-queued-bytes", "65536"]).await;
    let mut slow = Raw::connect(weir.mqtt, "slow").await;
    assert_eq!(slow.subscribe(1, &["flood/#"]).await, [1]);
    let mut fine = Mqtt::connect(weir.mqtt, "fine").await;
    fine.subscribe("after").await;
    let mut device = Raw::connect(weir.mqtt, "device").await;
    // 40 MB: more than the socket buffers between weir and the slow client hold.
    let payload = vec![b'x'; 10_000];
    for _ in 0..4000 {
        device.publish("flood/1", &payload).await;
    }
    weir.wait_metric("weir_broker_slow_subscribers_disconnected_total", 1.0)
        .await;
    assert!(
        slow.closed_within(20).await,
        "the slow subscriber is closed"
    );
    device.publish("after", br#"{"ok": 1}"#).await;
    let (topic, body) = fine
        .next(10)
        .await
        .expect("the other subscriber still gets messages");
    assert_eq!((topic.as_str(), body), ("after", json!({"ok": 1})));
    let (status, _) = weir.request(reqwest::Method::GET, "/healthz").await;
    assert_eq!(status, 200);
}

/// A rumqttc client of weir's broker with these options, its events on a channel.
async fn client_with(
    weir: &Weir,
    client_id: &str,
    configure: impl FnOnce(&mut MqttOptions),
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<()>,
) {
    let mut opts = MqttOptions::new(client_id, weir.mqtt.ip().to_string(), weir.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(5));
    configure(&mut opts);
    let (client, mut el) = AsyncClient::new(opts, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(event) = el.poll().await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    (client, rx, task)
}

/// The next PUBLISH among `events`, within 5 s.
async fn next_publish(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Option<rumqttc::Publish> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await? {
                Event::Incoming(Packet::Publish(p)) => return Some(p),
                _ => continue,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// A client with a persistent session subscribes to `filter` and goes away.
async fn subscribe_and_vanish(weir: &Weir, client_id: &str, filter: &str) {
    let (client, mut events, task) = client_with(weir, client_id, |o| {
        o.set_clean_session(false);
    })
    .await;
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Some(Event::Incoming(Packet::SubAck(_))) = events.recv().await {
            break;
        }
    }
    task.abort();
}

#[tokio::test]
async fn retained_messages_reach_later_subscribers_until_cleared() {
    let dir = temp_dir("broker-retained");
    let weir = Weir::start(&dir, &[]).await;
    let (publisher, _p, _pt) = client_with(&weir, "publisher", |_| {}).await;
    publisher
        .publish("plant/1/state", QoS::AtLeastOnce, true, "on")
        .await
        .unwrap();
    publisher
        .publish("plant/2/state", QoS::AtMostOnce, true, "off")
        .await
        .unwrap();
    weir.wait_metric("weir_broker_retained_messages", 2.0).await;
    let (reader, mut events, _rt) = client_with(&weir, "reader", |_| {}).await;
    reader
        .subscribe("plant/+/state", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = next_publish(&mut events).await.expect("a retained message");
        assert!(p.retain, "sent because retained, so marked so");
        got.push((p.topic, p.payload, p.qos as u8));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("plant/1/state".into(), "on".into(), 1),
            ("plant/2/state".into(), "off".into(), 0)
        ]
    );
    // A live message is not marked retained; an empty retained message clears the topic.
    publisher
        .publish("plant/1/state", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    let p = next_publish(&mut events).await.expect("the live message");
    assert!(!p.retain && p.payload.is_empty());
    weir.wait_metric_eq("weir_broker_retained_messages", 1.0)
        .await;
    let (late, mut late_events, _lt) = client_with(&weir, "late", |_| {}).await;
    late.subscribe("plant/#", QoS::AtLeastOnce).await.unwrap();
    let p = next_publish(&mut late_events).await.expect("one retained");
    assert_eq!(p.topic, "plant/2/state");
    assert!(next_publish(&mut late_events).await.is_none());
}

#[tokio::test]
async fn a_will_is_published_to_subscribers_and_rules_when_its_client_vanishes() {
    let dir = temp_dir("broker-will");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({"sql": "SELECT *, clientid() AS c FROM 'status/#'", "actions": [{"republish": {"topic": "seen"}}]});
    assert_eq!(weir.put_rule("wills", rule).await.0, 201);
    let (watcher, mut events, _wt) = client_with(&weir, "watcher", |_| {}).await;
    watcher
        .subscribe("status/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    watcher.subscribe("seen", QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A client that says goodbye leaves no will.
    let (polite, _pe, _ptask) = client_with(&weir, "polite", |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "status/polite",
            r#"{"gone": true}"#,
            QoS::AtLeastOnce,
            false,
        ));
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    polite.disconnect().await.unwrap();
    // One whose connection just drops does.
    let (_abrupt, _ae, abrupt_task) = client_with(&weir, "device-7", |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "status/device-7",
            r#"{"gone": true}"#,
            QoS::AtLeastOnce,
            false,
        ));
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    abrupt_task.abort();
    let mut got = Vec::new();
    while let Some(p) = next_publish(&mut events).await {
        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        got.push((p.topic, v.to_string()));
        if got.len() == 2 {
            break;
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            (
                "seen".to_owned(),
                json!({"gone": true, "c": "device-7"}).to_string()
            ),
            (
                "status/device-7".to_owned(),
                json!({"gone": true}).to_string()
            ),
        ]
    );
    assert!(
        next_publish(&mut events).await.is_none(),
        "no will for the client that disconnected"
    );
}

#[tokio::test]
async fn a_persistent_session_keeps_subscriptions_and_queued_messages_while_away() {
    let dir = temp_dir("broker-session");
    let weir = Weir::start(&dir, &[]).await;
    let persistent = |o: &mut MqttOptions| {
        o.set_clean_session(false);
    };
    subscribe_and_vanish(&weir, "reader", "jobs/#").await;
    weir.wait_metric_eq("weir_broker_connections", 0.0).await;
    assert_eq!(weir.metric("weir_broker_sessions").await, 1.0);

    let publisher = Mqtt::connect(weir.mqtt, "publisher").await;
    for n in 0..3 {
        publisher
            .publish("jobs/x", format!(r#"{{"n": {n}}}"#))
            .await;
    }
    // QoS 0 is not kept for a client that is away.
    publisher
        .client
        .publish("jobs/x", QoS::AtMostOnce, false, r#"{"n": 99}"#)
        .await
        .unwrap();
    weir.wait_metric("weir_broker_messages_received_total", 4.0)
        .await;
    assert!(weir.metric("weir_broker_queued_bytes").await > 0.0);

    let (_reader, mut events, _rt) = client_with(&weir, "reader", persistent).await;
    match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        Ok(Some(Event::Incoming(Packet::ConnAck(ack)))) => {
            assert!(ack.session_present, "the session was kept")
        }
        other => panic!("expected a CONNACK, got {other:?}"),
    }
    let mut got = Vec::new();
    while let Some(p) = next_publish(&mut events).await {
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
        if got.len() == 3 {
            break;
        }
    }
    assert_eq!(got, [r#"{"n": 0}"#, r#"{"n": 1}"#, r#"{"n": 2}"#]);
    assert!(next_publish(&mut events).await.is_none());
    weir.wait_metric_eq("weir_broker_queued_bytes", 0.0).await;

    // A clean session ends what was kept.
    let (_clean, mut events, _ct) = client_with(&weir, "reader", |_| {}).await;
    match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        Ok(Some(Event::Incoming(Packet::ConnAck(ack)))) => assert!(!ack.session_present),
        other => panic!("expected a CONNACK, got {other:?}"),
    }
    publisher.publish("jobs/x", r#"{"n": 3}"#).await;
    assert!(
        next_publish(&mut events).await.is_none(),
        "no subscription left"
    );
}

#[tokio::test]
async fn retained_messages_and_persistent_sessions_survive_a_restart() {
    let dir = temp_dir("broker-restart");
    let weir = Weir::start(&dir, &[]).await;
    let persistent = |o: &mut MqttOptions| {
        o.set_clean_session(false);
    };
    subscribe_and_vanish(&weir, "reader", "jobs/#").await;
    let publisher = Mqtt::connect(weir.mqtt, "publisher").await;
    publisher
        .client
        .publish("state/lamp", QoS::AtLeastOnce, true, "on")
        .await
        .unwrap();
    for n in 0..3 {
        publisher.publish("jobs/x", format!("{n}")).await;
    }
    weir.wait_metric("weir_broker_messages_received_total", 4.0)
        .await;
    drop(publisher);
    // Stopped as on SIGTERM: the queue for the reader is saved with the rest.
    let weir = weir.restart().await;
    assert_eq!(weir.metric("weir_broker_sessions").await, 1.0);
    assert_eq!(weir.metric("weir_broker_retained_messages").await, 1.0);
    let (_reader, mut events, _rt) = client_with(&weir, "reader", persistent).await;
    match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        Ok(Some(Event::Incoming(Packet::ConnAck(ack)))) => assert!(ack.session_present),
        other => panic!("expected a CONNACK, got {other:?}"),
    }
    let mut got = Vec::new();
    while let Some(p) = next_publish(&mut events).await {
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
        if got.len() == 3 {
            break;
        }
    }
    assert_eq!(got, ["0", "1", "2"], "the offline queue, once each");
    assert!(next_publish(&mut events).await.is_none());
    let (late, mut late_events, _lt) = client_with(&weir, "late", |_| {}).await;
    late.subscribe("state/#", QoS::AtLeastOnce).await.unwrap();
    let p = next_publish(&mut late_events)
        .await
        .expect("the retained message");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("state/lamp", &b"on"[..])
    );
}

/// A TLS client of weir's TLS listener that trusts `ca.pem`, with `client.pem` as its
/// certificate when `with_certificate`.
fn tls_options(
    weir: &Weir,
    certs: &std::path::Path,
    client_id: &str,
    with_certificate: bool,
) -> MqttOptions {
    use rumqttc::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let addr = weir.mqtts.expect("a TLS listener");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = if with_certificate {
        let chain = CertificateDer::pem_file_iter(certs.join("client.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(certs.join("client.key")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let mut opts = MqttOptions::new(client_id, "localhost", addr.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
    ));
    opts
}

#[tokio::test]
async fn tls_clients_are_identified_by_their_certificates() {
    let certs = make_certs();
    let dir = temp_dir("broker-tls");
    let c = |f: &str| certs.join(f).to_str().unwrap().to_owned();
    let (cert, key, ca) = (c("server.pem"), c("server.key"), c("ca.pem"));
    let weir = Weir::start(
        &dir,
        &[
            "--mqtts-listen",
            "127.0.0.1:8883",
            "--mqtt-tls-cert",
            &cert,
            "--mqtt-tls-key",
            &key,
            "--mqtt-tls-client-ca",
            &ca,
            "--mqtt-tls-require-client-id",
            "true",
            "--mqtt-allow-anonymous",
            "false",
        ],
    )
    .await;
    let rule = json!({
        "sql": "SELECT principal() AS p, clientid() AS c FROM 'tls/in'",
        "actions": [{"republish": {"topic": "tls/out"}}]
    });
    assert_eq!(weir.put_rule("tls", rule).await.0, 201);
    let connect = connack_of;
    // With its certificate, under its certificate's name: in, and known by it.
    let (client, mut el) = connect(tls_options(&weir, &certs, "weir-client", true))
        .await
        .expect("the client with a certificate is let in");
    client.subscribe("tls/out", QoS::AtLeastOnce).await.unwrap();
    client
        .publish("tls/in", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .expect("the rule's output");
    let v: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
    assert_eq!(v, json!({"p": "weir-client", "c": "weir-client"}));
    // Under another client id: refused, as --mqtt-tls-require-client-id says.
    assert_eq!(
        connect(tls_options(&weir, &certs, "someone-else", true))
            .await
            .err(),
        Some(rumqttc::ConnectReturnCode::BadClientId)
    );
    // Without a certificate, and anonymous clients not allowed: refused.
    assert_eq!(
        connect(tls_options(&weir, &certs, "no-cert", false))
            .await
            .err(),
        Some(rumqttc::ConnectReturnCode::NotAuthorized)
    );
    // Plain TCP to the TLS port is no MQTT connection.
    let mut plain = MqttOptions::new("plain", "127.0.0.1", weir.mqtts.unwrap().port());
    plain.set_keep_alive(Duration::from_secs(5));
    let (_p, mut el) = AsyncClient::new(plain, 10);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), el.poll())
            .await
            .unwrap()
            .is_err()
    );
    weir.wait_metric(
        r#"weir_broker_connections_refused_total{reason="tls"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn websocket_clients_publish_and_subscribe_like_any_other() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message as Ws, client::IntoClientRequest};
    let dir = temp_dir("broker-ws");
    let weir = Weir::start(&dir, &["--mqtt-ws-listen", "127.0.0.1:8083"]).await;
    let rule = json!({"sql": "SELECT n, clientid() AS c FROM 'ws/in'", "actions": [{"republish": {"topic": "ws/out"}}]});
    assert_eq!(weir.put_rule("ws", rule).await.0, 201);
    let addr = weir.mqtt_ws.expect("a WebSocket listener");
    let mut req = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    // One packet split over two WebSocket messages, as MQTT over WebSocket allows.
    let connect = connect_v4("dashboard");
    ws.send(Ws::binary(connect[..5].to_vec())).await.unwrap();
    ws.send(Ws::binary(connect[5..].to_vec())).await.unwrap();
    let mut read = Vec::new();
    let mut next_bytes = async |want: usize, read: &mut Vec<u8>| {
        while read.len() < want {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Ws::Binary(b)))) => read.extend_from_slice(&b),
                other => panic!("expected binary MQTT, got {other:?}"),
            }
        }
        read.drain(..want).collect::<Vec<u8>>()
    };
    assert_eq!(next_bytes(4, &mut read).await, [0x20, 2, 0, 0], "CONNACK");
    // SUBSCRIBE to ws/out at QoS 0, then PUBLISH to ws/in at QoS 0, in one message.
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend(str_field("ws/out"));
    body.push(0);
    let mut packets = frame(0x82, &body, body.len());
    let mut publish = str_field("ws/in");
    publish.extend_from_slice(br#"{"n": 7}"#);
    packets.extend(frame(0x30, &publish, publish.len()));
    ws.send(Ws::binary(packets)).await.unwrap();
    let mut got = Vec::new();
    let out = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Ws::Binary(b))) => got.extend_from_slice(&b),
                other => panic!("expected binary MQTT, got {other:?}"),
            }
            // SUBACK (5 bytes), then the rule's output as a PUBLISH.
            if got.len() > 5 && got[5] == 0x30 && got.len() >= 7 + got[6] as usize {
                return got[5..].to_vec();
            }
        }
    })
    .await
    .expect("the rule's output");
    assert_eq!(&got[..5], [0x90, 3, 0, 1, 0], "SUBACK");
    let topic_len = usize::from(u16::from_be_bytes([out[2], out[3]]));
    assert_eq!(&out[4..4 + topic_len], b"ws/out");
    let v: serde_json::Value = serde_json::from_slice(&out[4 + topic_len..]).unwrap();
    assert_eq!(v, json!({"n": 7, "c": "dashboard"}));
}

/// A saved queue larger than the bounds (edited, or saved with larger limits) is cut to
/// them at start, and what is cut is counted.
#[tokio::test]
async fn a_saved_queue_is_held_to_the_bounds_at_start() {
    let dir = temp_dir("broker-saved-bound");
    std::fs::create_dir_all(dir.join("broker")).unwrap();
    std::fs::write(
        dir.join("broker/sessions.json"),
        r#"[{"client_id": "reader", "expiry": 4294967295, "subscriptions": [{"filter": "jobs/#", "qos": 1}]}]"#,
    )
    .unwrap();
    // Three messages of 600 bytes each; the bound below holds one.
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [b'x'; 600]);
    let message = format!(r#"{{"topic": "jobs/x", "payload": "{payload}", "qos": 1}}"#);
    std::fs::write(
        dir.join("broker/queues.json"),
        format!(r#"[{{"client_id": "reader", "inflight": [], "pending": [{message}, {message}, {message}]}}]"#),
    )
    .unwrap();
    let weir = Weir::start(&dir, &["--mqtt-max-queued-bytes", "1000"]).await;
    assert_eq!(
        weir.metric(r#"weir_broker_messages_dropped_total{reason="queue_full"}"#)
            .await,
        2.0
    );
    let (_reader, mut events, _rt) = client_with(&weir, "reader", |o| {
        o.set_clean_session(false);
    })
    .await;
    let p = next_publish(&mut events)
        .await
        .expect("the one message kept");
    assert_eq!(p.payload.len(), 600);
    assert!(next_publish(&mut events).await.is_none());
}

/// Reads packets from a raw MQTT 3.1.1 connection until a PUBLISH to `topic` comes (its
/// payload), or the connection closes (`None`), within `secs`.
async fn raw_publish_to(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    topic: &str,
    secs: u64,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        // Every whole packet in the buffer.
        while buf.len() >= 2 {
            let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
            loop {
                let b = *buf.get(i)?;
                len += usize::from(b & 0x7f) * mult;
                mult *= 128;
                i += 1;
                if b & 0x80 == 0 {
                    break;
                }
            }
            if buf.len() < i + len {
                break;
            }
            let packet: Vec<u8> = buf.drain(..i + len).collect();
            if packet[0] >> 4 == 3 {
                let body = &packet[i..];
                let n = usize::from(u16::from_be_bytes([body[0], body[1]]));
                if &body[2..2 + n] == topic.as_bytes() {
                    // QoS 0: no packet id.
                    return Some(body[2 + n..].to_vec());
                }
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("nothing to {topic} within {secs} s"))
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Idle connections are parked without a task (docs/broker.md, "Idle connections"); a
/// parked one is still served: what is published to it reaches it, what it publishes
/// reaches the rules, and its keep-alive still runs out (its will is published).
#[tokio::test]
async fn a_parked_connection_is_served_and_its_keep_alive_still_runs() {
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir("broker-park");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({"sql": "SELECT n FROM 'park/+'", "actions": [{"republish": {"topic": "parked-out"}}]});
    assert_eq!(weir.put_rule("park", rule).await.0, 201);
    let parked = "weir_broker_connections_parked";
    let (watcher, mut events, _wt) = client_with(&weir, "park-watcher", |_| {}).await;
    watcher
        .subscribe("status/#", QoS::AtMostOnce)
        .await
        .unwrap();
    watcher
        .subscribe("parked-out", QoS::AtMostOnce)
        .await
        .unwrap();

    // A device with a keep-alive of 2 s (let go after 3 s of silence) and a will.
    let mut device = tokio::net::TcpStream::connect(weir.mqtt).await.unwrap();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x06, 0, 2];
    body.extend(str_field("park-device"));
    body.extend(str_field("status/park-device"));
    body.extend(str_field("gone"));
    device
        .write_all(&frame(0x10, &body, body.len()))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut subscribe = vec![0, 1];
    subscribe.extend(str_field("to-device"));
    subscribe.push(0);
    device
        .write_all(&frame(0x82, &subscribe, subscribe.len()))
        .await
        .unwrap();
    // Once subscribed and quiet for a second, it is parked (the watcher too, maybe).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let parked_once = loop {
        let v = weir.metric(parked).await;
        if v >= 1.0 {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no connection was parked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Sent to while parked: it gets it.
    watcher
        .publish("to-device", QoS::AtMostOnce, false, "hello")
        .await
        .unwrap();
    assert_eq!(
        raw_publish_to(&mut device, &mut buf, "to-device", 5)
            .await
            .as_deref(),
        Some(&b"hello"[..])
    );
    // Publishing after a quiet second: the rule gets it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        weir.metric(parked).await >= 1.0,
        "parked again: {parked_once}"
    );
    let mut publish = str_field("park/1");
    publish.extend_from_slice(br#"{"n": 7}"#);
    device
        .write_all(&frame(0x30, &publish, publish.len()))
        .await
        .unwrap();
    let out = next_publish(&mut events).await.expect("the rule's output");
    assert_eq!(
        (out.topic.as_str(), &out.payload[..]),
        ("parked-out", &br#"{"n":7}"#[..])
    );
    // Then silent: let go after 3 s, parked meanwhile, and its will is published.
    let t0 = std::time::Instant::now();
    assert_eq!(
        raw_publish_to(&mut device, &mut buf, "nothing", 10).await,
        None
    );
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(2500), "let go after {took:?}");
    let will = next_publish(&mut events).await.expect("the will");
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("status/park-device", &b"gone"[..])
    );
}

/// A packet that arrives in two parts a second and a half apart is read whole: the
/// connection is not parked (and its first part lost) while part of a packet waits.
#[tokio::test]
async fn a_packet_split_across_a_pause_is_read_whole() {
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir("broker-park-split");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({"sql": "SELECT n FROM 'park/+'", "actions": [{"republish": {"topic": "parked-out"}}]});
    assert_eq!(weir.put_rule("park", rule).await.0, 201);
    let (watcher, mut events, _wt) = client_with(&weir, "split-watcher", |_| {}).await;
    watcher
        .subscribe("parked-out", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut device = tokio::net::TcpStream::connect(weir.mqtt).await.unwrap();
    device.write_all(&connect_v4("split-device")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut publish = str_field("park/2");
    publish.extend_from_slice(br#"{"n": 8}"#);
    let packet = frame(0x30, &publish, publish.len());
    let (first, rest) = packet.split_at(packet.len() / 2);
    device.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    device.write_all(rest).await.unwrap();
    let out = next_publish(&mut events).await.expect("the rule's output");
    assert_eq!(
        (out.topic.as_str(), &out.payload[..]),
        ("parked-out", &br#"{"n":8}"#[..])
    );
}
