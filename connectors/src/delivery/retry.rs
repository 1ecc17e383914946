//! The retry policy shared by every action: capped exponential backoff with full jitter,
//! bounded by a number of attempts and a deadline. Whether an error is worth retrying is
//! decided once, where the error is classified ([`super::Outcome`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    #[serde(with = "humantime_serde_compat")]
    pub initial_backoff: Duration,
    /// Longest delay between two attempts.
    #[serde(with = "humantime_serde_compat")]
    pub max_backoff: Duration,
    /// Attempts in all, the first included; 0 for no limit (the deadline still applies).
    pub max_attempts: u32,
    /// Give up (dead-letter the output) when this much time has passed since its first
    /// failed attempt. Outputs wait in the action's disk buffer meanwhile.
    #[serde(with = "humantime_serde_compat")]
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_attempts: 0,
            deadline: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// Whether an output that failed `attempts` times, first `age` ago, may be tried again.
    pub fn may_retry(&self, attempts: u32, age: Duration) -> bool {
        (self.max_attempts == 0 || attempts < self.max_attempts) && age < self.deadline
    }

    /// The delay before attempt `attempt + 1` (`attempt` counts from 1): a random duration
    /// up to `initial * 2^(attempt-1)`, capped at `max_backoff` ("full jitter").
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max_backoff);
        let nanos = cap.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        // Never less than a tenth of the cap, so retries do not bunch up at zero.
        Duration::from_nanos(nanos / 10 + rand::random_range(0..=nanos - nanos / 10))
    }
}

/// Durations as human-readable strings ("100ms", "30s") in config and API bodies.
pub mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration '{s}': {e} (examples: 500ms, 30s, 5m)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        };
        for _ in 0..100 {
            let b1 = p.backoff(1);
            assert!(
                b1 >= Duration::from_millis(10) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b3 = p.backoff(3);
            assert!(b3 <= Duration::from_millis(400), "{b3:?}");
            assert!(p.backoff(30) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn parses_durations() {
        let p: RetryPolicy =
            serde_json::from_str(r#"{"initial_backoff": "5ms", "deadline": "2m"}"#).unwrap();
        assert_eq!(p.initial_backoff, Duration::from_millis(5));
        assert_eq!(p.deadline, Duration::from_secs(120));
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"deadline": "soon"}"#).is_err());
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"nope": 1}"#).is_err());
    }
}
