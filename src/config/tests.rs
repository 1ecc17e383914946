//! The settings as an operator gives them: flags, a config file, defaults, bad values.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn try_parse(args: &[&str]) -> Result<ServeArgs, ParseError> {
    let mut full = vec!["weir", "serve"];
    full.extend_from_slice(args);
    match parse_from(full)?.command {
        Command::Serve(a) => Ok(*a),
        Command::Rules(_) => unreachable!("parsed as serve"),
    }
}

fn parse(args: &[&str]) -> ServeArgs {
    try_parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn defaults() {
    let s = Settings::resolve(&parse(&[])).unwrap();
    assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.mqtt.listen.to_string(), "127.0.0.1:1883");
    assert_eq!(s.storage.data_dir, PathBuf::from("weir-data"));
    assert_eq!(s.storage.output_dir, PathBuf::from("weir-data/out"));
    assert!(s.ingress.broker.is_none());
    assert_eq!(s.pipeline.batch_linger, Duration::from_millis(1));
    assert_eq!(s.ingress.fleet, crate::fleet::FleetSettings::default());
    assert_eq!(s.ingress.fleet.adopt_after, Some(Duration::from_secs(15)));
    let s = Settings::resolve(&parse(&[
        "--broker-adopt-after",
        "2s",
        "--broker-retire-after",
        "OFF",
    ]))
    .unwrap();
    assert_eq!(s.ingress.fleet.adopt_after, Some(Duration::from_secs(2)));
    assert_eq!(s.ingress.fleet.retire_after, None);
    let err = Settings::resolve(&parse(&["--broker-adopt-after", "10ms"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--broker-adopt-after must be at least 1s, or off"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(s.runtime.worker_threads, (cpus / 2).max(1));
    let s = Settings::resolve(&parse(&["--worker-threads", "3"])).unwrap();
    assert_eq!(s.runtime.worker_threads, 3);
    let err = Settings::resolve(&parse(&["--worker-threads", "0"])).unwrap_err();
    assert!(format!("{err:#}").contains("--worker-threads"), "{err:#}");
    let s = Settings::resolve(&parse(&[])).unwrap();
    assert!(s.auth.enabled && !s.auth.metrics);
    assert!(matches!(s.auth.admin_token, AdminToken::DataDir));
    let s = Settings::resolve(&parse(&["--auth", "off", "--metrics-auth", "true"])).unwrap();
    assert!(!s.auth.enabled && s.auth.metrics);
    assert!(!s.runtime.log_json);
    let s = Settings::resolve(&parse(&["--log-format", "json"])).unwrap();
    assert!(s.runtime.log_json);
    let err = Settings::resolve(&parse(&["--log-format", "xml"])).unwrap_err();
    assert!(format!("{err:#}").contains("--log-format must be human or json"));
    let err = Settings::resolve(&parse(&["--auth", "maybe"])).unwrap_err();
    assert!(
        format!("{err:#}").contains("--auth must be on or off"),
        "{err:#}"
    );
    // The policy is closed by default; file:// may write below the output directory.
    let s = Settings::resolve(&parse(&[])).unwrap();
    let out = std::path::absolute("weir-data/out").unwrap();
    assert_eq!(s.policy.file_dirs, [out]);
    assert!(!s.policy.allow_link_local && !s.policy.allow_ambient_credentials);
    assert!(s.policy.kafka_properties.is_empty() && s.http.tls.is_none());
    let s = Settings::resolve(&parse(&[
        "--allow-kafka-properties",
        "ssl.ca.location,debug",
        "--allow-file-dirs",
        "/srv/a/../b",
    ]))
    .unwrap();
    assert_eq!(s.policy.kafka_properties, ["ssl.ca.location", "debug"]);
    assert_eq!(s.policy.file_dirs[1], PathBuf::from("/srv/b"));
    let s = Settings::resolve(&parse(&["--admin-token-file", "/run/secrets/weir"])).unwrap();
    assert!(matches!(s.auth.admin_token, AdminToken::File(_)));
}

#[test]
fn anonymous_mqtt_clients_only_on_loopback_unless_told() {
    let s = Settings::resolve(&parse(&[])).unwrap();
    assert!(s.mqtt.access.allow_anonymous);
    assert!(s.mqtt.access.passwords.is_none() && s.mqtt.access.acl.is_none());
    let s = Settings::resolve(&parse(&["--mqtt-listen", "0.0.0.0:1883"])).unwrap();
    assert!(!s.mqtt.access.allow_anonymous);
    let s = Settings::resolve(&parse(&[
        "--mqtt-listen",
        "0.0.0.0:1883",
        "--mqtt-allow-anonymous",
    ]))
    .unwrap();
    assert!(s.mqtt.access.allow_anonymous);
    let s = Settings::resolve(&parse(&["--mqtt-allow-anonymous", "false"])).unwrap();
    assert!(!s.mqtt.access.allow_anonymous);
    assert_eq!(s.mqtt.limits.max_keep_alive, 60);
    // The TLS listener's anonymous clients follow its own address.
    let s = Settings::resolve(&parse(&[
        "--mqtts-listen",
        "0.0.0.0:8883",
        "--mqtt-tls-cert",
        "c.pem",
        "--mqtt-tls-key",
        "k.pem",
    ]))
    .unwrap();
    assert!(s.mqtt.access.allow_anonymous);
    let tls = s.mqtt.tls.expect("a TLS listener");
    assert!(!tls.options.allow_anonymous && !tls.options.require_client_id);
    for (args, want) in [
        (&["--mqtts-listen", "0.0.0.0:8883"][..], "go together"),
        (
            &["--mqtt-tls-client-ca", "ca.pem"][..],
            "need --mqtts-listen",
        ),
    ] {
        let err = Settings::resolve(&parse(args)).unwrap_err();
        assert!(format!("{err:#}").contains(want), "{err:#}");
    }
    let s = Settings::resolve(&parse(&["--mqtt-max-keep-alive", "20m"])).unwrap();
    assert_eq!(s.mqtt.limits.max_keep_alive, 1200);
    for bad in ["0s", "1500ms", "19h"] {
        let err = Settings::resolve(&parse(&["--mqtt-max-keep-alive", bad])).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("--mqtt-max-keep-alive must be whole seconds"),
            "{err:#}"
        );
    }
    // Files that cannot be read or parsed stop the start, naming flag and line.
    let err = Settings::resolve(&parse(&["--mqtt-password-file", "/nonexistent/pw"])).unwrap_err();
    assert!(
        format!("{err:#}").starts_with("--mqtt-password-file: cannot read /nonexistent/pw"),
        "{err:#}"
    );
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user a\ntopic raed x\nbogus\n").unwrap();
    let err = Settings::resolve(&parse(&["--mqtt-acl-file", acl.to_str().unwrap()])).unwrap_err();
    assert!(
        format!("{err:#}")
            .ends_with("line 3: unknown keyword 'bogus' (expected user, topic or pattern)"),
        "{err:#}"
    );
}

#[test]
fn the_shipped_example_config_parses_and_flags_win() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/weir.example.toml");
    let args = parse(&["--config", path, "--http-listen", "127.0.0.1:9999"]);
    let s = Settings::resolve(&args).unwrap();
    assert_eq!(s.http.listen.to_string(), "127.0.0.1:9999");
    let b = s.ingress.broker.expect("the example names a broker");
    assert_eq!(b.share_group.as_deref(), Some("weir"));
    assert_eq!(s.pipeline.batch_linger, Duration::from_millis(2));
    assert_eq!(
        s.policy.file_dirs,
        [
            PathBuf::from("/var/lib/weir/out"),
            PathBuf::from("/var/lib/weir/exports")
        ]
    );
    assert_eq!(s.policy.kafka_properties, ["ssl.ca.location"]);
    assert_eq!(s.mqtt.limits.max_subscriptions, 100);
    assert_eq!(s.shadows.max_bytes, 8192);
    assert_eq!(s.shadows.max_shadows, 1_000_000);
    let names: Vec<&String> = s.connections.keys().collect();
    assert_eq!(names, ["events", "lake"]);
    for c in s.connections.values() {
        c.0.validate().unwrap();
    }
    let s = Settings::resolve(&parse(&["--config", path])).unwrap();
    assert_eq!(s.http.listen.to_string(), "0.0.0.0:8080");
}

#[test]
fn bad_values_are_refused_by_name() {
    let err = Settings::resolve(&parse(&["--rule-time-budget", "0s"])).unwrap_err();
    assert!(
        format!("{err:#}").contains("--rule-time-budget: must be more than 0"),
        "{err:#}"
    );
    let s = Settings::resolve(&parse(&["--rule-time-budget", "250ms"])).unwrap();
    assert_eq!(s.pipeline.rule_time_budget, Duration::from_millis(250));
    assert_eq!(s.pipeline.rule_memory_budget, 256 << 20);
    for small in ["0", "1048575"] {
        let err = Settings::resolve(&parse(&["--rule-memory-budget", small])).unwrap_err();
        assert!(
            format!("{err:#}").contains("--rule-memory-budget must be at least 1048576"),
            "{err:#}"
        );
    }
    let s = Settings::resolve(&parse(&["--rule-memory-budget", "1048576"])).unwrap();
    assert_eq!(s.pipeline.rule_memory_budget, 1 << 20);
    let err = try_parse(&["--batch-linger", "soon"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'soon'") && err.contains("--batch-linger"),
        "{err}"
    );
    let err = Settings::resolve(&parse(&["--broker", "http://x"])).unwrap_err();
    assert!(format!("{err:#}").contains("mqtt://"), "{err:#}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "http_listen = \"127.0.0.1:1\"\nno_such_setting = 1\n").unwrap();
    let err = try_parse(&["--config", f.to_str().unwrap()]).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown setting 'no_such_setting'"),
        "{err}"
    );
    assert_eq!(
        Settings::resolve(&parse(&[]))
            .unwrap()
            .mqtt
            .limits
            .max_packet,
        128 * 1024
    );
    for bad in ["1023", "268435456"] {
        let err = Settings::resolve(&parse(&["--mqtt-max-packet-size", bad])).unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!(
                "--mqtt-max-packet-size must be from 1024 to 268435455 bytes, got {bad}"
            )),
            "{err:#}"
        );
    }
    let s = Settings::resolve(&parse(&["--mqtt-max-packet-size", "268435455"])).unwrap();
    assert_eq!(s.mqtt.limits.max_packet, 268_435_455);
}

/// Each flag's environment variable is its name's; a file's value is the flag's default,
/// so that the environment and the flag win over it; a file's bad value names its key.
#[test]
fn layers_are_defaults_file_environment_flags() {
    let serve = layers::command()
        .find_subcommand("serve")
        .expect("serve")
        .clone();
    for (id, env) in [
        ("http_listen", "WEIR_HTTP_LISTEN"),
        ("mqtt_max_keep_alive", "WEIR_MQTT_MAX_KEEP_ALIVE"),
        ("allow_file_dirs", "WEIR_ALLOW_FILE_DIRS"),
        ("config", "WEIR_CONFIG"),
    ] {
        let arg = serve.get_arguments().find(|a| a.get_id() == id).unwrap();
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env), "{id}");
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("weir.toml");
    std::fs::write(
        &f,
        "batch_max_rows = 7\nallow_kafka_properties = [\"a\", \"b\"]\nmqtt_allow_anonymous = false\n",
    )
    .unwrap();
    let file = f.to_str().unwrap();
    let s = Settings::resolve(&parse(&["--config", file])).unwrap();
    assert_eq!(s.pipeline.batch_max_rows, 7);
    assert_eq!(s.policy.kafka_properties, ["a", "b"]);
    assert!(!s.mqtt.access.allow_anonymous);
    let s = Settings::resolve(&parse(&["--config", file, "--batch-max-rows", "9"])).unwrap();
    assert_eq!(s.pipeline.batch_max_rows, 9, "a flag wins over the file");
    assert_eq!(
        s.pipeline.action_queue, 1024,
        "the default where neither says"
    );
    for (text, want) in [
        (
            "batch_max_rows = \"many\"\n",
            "batch_max_rows: invalid value 'many'",
        ),
        ("http_listen = [1, [2]]\n", "http_listen"),
        ("config = \"x\"\n", "unknown setting 'config'"),
        ("connections = 3\n", "connections"),
    ] {
        std::fs::write(&f, text).unwrap();
        let err = try_parse(&["--config", file]).unwrap_err().to_string();
        assert!(
            err.contains(want) && err.contains("weir.toml"),
            "{text}: {err}"
        );
    }
}

#[test]
fn shadow_limits_are_held_to_their_bounds() {
    let s = Settings::resolve(&parse(&[])).unwrap();
    assert_eq!(
        (
            s.shadows.max_bytes,
            s.shadows.max_shadows,
            s.shadows.cache_bytes
        ),
        (8192, 1_000_000, 32 << 20)
    );
    let err = |args: &[&str]| Settings::resolve(&parse(args)).unwrap_err().to_string();
    assert!(err(&["--shadow-max-bytes", "30721"]).contains("at most 30720"));
    assert!(err(&["--shadow-max-bytes", "0"]).contains("--shadow-max-bytes"));
    assert!(err(&["--max-shadows", "0"]).contains("--max-shadows"));
    assert!(err(&["--shadow-cache-bytes", "1000"]).contains("at least 1048576"));
    let s = Settings::resolve(&parse(&["--shadow-max-bytes", "30720"])).unwrap();
    assert_eq!(s.shadows.max_bytes, 30720);
}
