//! What the sinks' unit tests share.

use weir_engine::template::TemplateExprs;

use super::SinkConfig;

/// A configuration from its JSON form, which must parse.
pub(crate) fn parse<C: SinkConfig>(json: serde_json::Value) -> C {
    serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{json} does not parse: {e}"))
}

/// Asserts that each configuration parses but is refused by validation, with a
/// message containing its needle.
pub(crate) fn assert_refused<C: SinkConfig>(cases: Vec<(serde_json::Value, &str)>) {
    for (json, needle) in cases {
        let config: C = parse(json.clone());
        let Err(err) = config.validate(&mut TemplateExprs::default()) else {
            panic!("{json} was accepted; it should be refused with '{needle}'");
        };
        let err = err.to_string();
        assert!(
            err.contains(needle),
            "{json}: '{err}' should mention '{needle}'"
        );
    }
}

/// Asserts that each configuration is valid but refused by `policy`, with a message
/// containing its needle.
pub(crate) fn assert_not_allowed<C: SinkConfig>(
    policy: &super::Policy,
    cases: Vec<(serde_json::Value, &str)>,
) {
    for (json, needle) in cases {
        let config: C = parse(json.clone());
        if let Err(e) = config.validate(&mut TemplateExprs::default()) {
            panic!("{json} is not valid: {e}");
        }
        match config.check_policy(policy) {
            Ok(()) => panic!("{json} was allowed; it should be refused with '{needle}'"),
            Err(e @ super::ConfigError::NotAllowed { .. }) => {
                let err = e.to_string();
                assert!(
                    err.contains(needle),
                    "{json}: '{err}' should mention '{needle}'"
                );
            }
            Err(e) => panic!("{json}: refused as invalid, not by the policy: {e}"),
        }
    }
}

/// Asserts that each configuration is valid and allowed by `policy`.
pub(crate) fn assert_allowed<C: SinkConfig>(policy: &super::Policy, cases: Vec<serde_json::Value>) {
    for json in cases {
        let config: C = parse(json.clone());
        config
            .validate(&mut TemplateExprs::default())
            .unwrap_or_else(|e| panic!("{json} is not valid: {e}"));
        config
            .check_policy(policy)
            .unwrap_or_else(|e| panic!("{json} should be allowed: {e}"));
    }
}

/// The default policy of a weir whose data directory is `/data` and whose API
/// listens on 127.0.0.1:8080.
pub(crate) fn default_policy() -> super::Policy {
    super::Policy {
        file_dirs: vec!["/data/out".into()],
        weir_listeners: vec!["127.0.0.1:8080".parse().unwrap()],
        ..Default::default()
    }
}
