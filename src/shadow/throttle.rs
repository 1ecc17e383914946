//! How much shadow requests may ask at once: 10 requests of one MQTT connection in one
//! batch (AWS: 10 in flight per connection), and each thing's rate
//! (`--shadow-requests-per-second-per-thing`, as Greengrass: 20 a second), a bucket per
//! thing that holds a second's worth of requests and refills at the rate. Buckets that are
//! full again are forgotten, so memory follows the things asking now, not every thing
//! that ever asked. What is past either is refused with 429 `Too Many Requests`.

use std::collections::HashMap;
use std::time::Instant;

use super::batch::{Job, Reply};
use super::request::ShadowError;

/// Most requests of one MQTT connection served in one batch; the rest are refused.
pub const IN_FLIGHT_MAX: usize = 10;

/// The requests of a batch refused before they are looked at: past their connection's
/// requests in flight, or past their thing's rate.
pub fn refused(throttle: &mut Throttle, jobs: &[Job]) -> Vec<Option<ShadowError>> {
    let now = Instant::now();
    let mut per_client: HashMap<&str, usize> = HashMap::new();
    jobs.iter()
        .map(|j| {
            if let Reply::Mqtt(m) = &j.reply
                && let Some(client) = &m.client_id
            {
                let n = per_client.entry(client).or_default();
                *n += 1;
                if *n > IN_FLIGHT_MAX {
                    return Some(ShadowError::too_many());
                }
            }
            match &j.id {
                Ok(id) if !throttle.allow(&id.thing, now) => Some(ShadowError::too_many()),
                _ => None,
            }
        })
        .collect()
}

/// Buckets kept before the full ones are looked for and dropped.
const PRUNE_AT: usize = 4096;

pub struct Throttle {
    rate: f64,
    buckets: HashMap<String, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Throttle {
    /// `rate` requests a second per thing (0: no limit).
    pub fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            buckets: HashMap::new(),
        }
    }

    /// Whether `thing` may make a request at `now`; if so, it is counted.
    pub fn allow(&mut self, thing: &str, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if self.buckets.len() >= PRUNE_AT {
            let rate = self.rate;
            self.buckets.retain(|_, b| b.refilled(now, rate) < rate);
        }
        let rate = self.rate;
        let b = self.buckets.entry(thing.to_owned()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        b.tokens = b.refilled(now, rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64) -> f64 {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + secs * rate).min(rate)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_thing_gets_a_second_of_requests_then_the_rate() {
        let mut t = Throttle::new(20);
        let t0 = Instant::now();
        let allowed = (0..30).filter(|_| t.allow("lamp", t0)).count();
        assert_eq!(allowed, 20);
        assert!(t.allow("pump", t0), "each thing has its own bucket");
        // 100 ms later: two more.
        let t1 = t0 + Duration::from_millis(100);
        let allowed = (0..5).filter(|_| t.allow("lamp", t1)).count();
        assert_eq!(allowed, 2);
        // A second of quiet fills the bucket again, not more.
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!((0..30).filter(|_| t.allow("lamp", t2)).count(), 20);
        assert!(Throttle::new(0).allow("x", t0));
    }

    fn job(client: &str, thing: &str) -> Job {
        let mut msg = weir_engine::Message::new(format!("$aws/things/{thing}/shadow/get"), "");
        msg.client_id = Some(client.to_owned());
        Job {
            id: crate::shadow::ShadowId::new(thing, None).map_err(|_| ShadowError::internal()),
            op: crate::shadow::Op::Get,
            payload: bytes::Bytes::new(),
            reply: Reply::Mqtt(std::sync::Arc::new(msg)),
            received: Instant::now(),
        }
    }

    #[test]
    fn a_connection_has_ten_requests_of_a_batch_served() {
        let mut t = Throttle::new(0);
        let mut jobs: Vec<Job> = (0..12).map(|i| job("a", &format!("t{i}"))).collect();
        jobs.push(job("b", "t0"));
        let refused = refused(&mut t, &jobs);
        let codes: Vec<Option<u16>> = refused.iter().map(|r| r.as_ref().map(|e| e.code)).collect();
        assert_eq!(codes[..10], [None; 10]);
        assert_eq!(codes[10..], [Some(429), Some(429), None]);
        let mut t = Throttle::new(1);
        let refused = super::refused(&mut t, &[job("a", "x"), job("b", "x"), job("c", "y")]);
        assert!(refused[0].is_none() && refused[2].is_none());
        assert_eq!(refused[1].as_ref().unwrap().message, "Too Many Requests");
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let mut t = Throttle::new(5);
        let t0 = Instant::now();
        for i in 0..PRUNE_AT {
            t.allow(&format!("thing-{i}"), t0);
        }
        assert_eq!(t.buckets.len(), PRUNE_AT);
        t.allow("late", t0 + Duration::from_secs(2));
        assert_eq!(t.buckets.len(), 1);
    }
}
