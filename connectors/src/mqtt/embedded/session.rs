//! A client's session: what outlives one connection when the client asks for it (MQTT
//! 3.1.1's `clean session = 0`, MQTT 5's Session Expiry Interval): its subscriptions, the
//! messages queued for it, the QoS 1 and 2 messages sent and not yet acknowledged (sent
//! again, marked DUP, when it reconnects), and the QoS 2 packet ids it sent and has not yet
//! released.
//!
//! The session is shared between the router (which queues messages into it, under its
//! lock) and the connection task of the client, if one is connected (which takes them out,
//! woken by [`Signals::wake`]). No lock is held across an await.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use prometheus::IntGauge;

use super::delivery::Delivery;
use super::signals::Signals;
use super::store::{SavedMessage, SavedQueue};
use super::subscription::SubOptions;

/// Messages queued for one client; one more is refused as if its bytes were over.
pub const MAX_QUEUED_MESSAGES: usize = 4096;
/// The most QoS 1 and 2 messages sent to an MQTT 3.1.1 client and not yet acknowledged
/// (MQTT 5 clients say their own, up to this too).
pub const MAX_INFLIGHT: u16 = 100;

pub type ConnId = u64;

/// A QoS 1 or 2 message sent to the client and not yet acknowledged in full.
pub enum Flight {
    /// Waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(Delivery),
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// The connection a session is attached to.
pub struct Link {
    pub conn: ConnId,
    pub signals: Arc<Signals>,
}

pub struct Session {
    pub client_id: Arc<str>,
    /// The identity of the client's latest connection, for the ACL's read checks.
    pub principal: Option<Arc<str>>,
    /// Keyed by the filter as subscribed (with any `$share/<group>/`).
    /// (A B-tree: an empty one costs half what an empty hash map does, and most devices
    /// have none or a few.)
    pub subscriptions: BTreeMap<Arc<str>, SubOptions>,
    /// Made with the first message either way, dropped once empty when the connection
    /// parks: most devices are idle, and the three empty lists cost 88 bytes.
    queues: Option<Box<Queues>>,
    /// Bytes held in the queues (at most 4 GiB: the bound of one client's queue is
    /// capped there).
    held: u32,
    next_pkid: u16,
    /// Seconds the session outlives its connection; `u32::MAX`: for ever.
    pub expiry: u32,
    pub link: Option<Link>,
    /// Counts attachments, so that a timer set when the client went away can tell
    /// whether it came back meanwhile.
    pub generation: u32,
}

/// A session's messages.
#[derive(Default)]
pub struct Queues {
    /// To be sent.
    pending: VecDeque<Delivery>,
    pub inflight: VecDeque<(u16, Flight)>,
    /// QoS 2 packet ids received from the client and not yet released by its PUBREL.
    /// (A few at most, bounded by the receive maximum: a list costs less than a set.)
    pub incoming_qos2: Vec<u16>,
}

/// The queues of a session that has none: what reading finds.
static NO_QUEUES: Queues = Queues {
    pending: VecDeque::new(),
    inflight: VecDeque::new(),
    incoming_qos2: Vec::new(),
};

/// What became of a message offered to a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// QoS 0 for a client that is not connected: not kept, as with Mosquitto.
    NotKept,
    /// Over the client's or the broker's bounds.
    Full,
}

impl Session {
    pub fn new(client_id: Arc<str>) -> Self {
        Self {
            client_id,
            principal: None,
            subscriptions: BTreeMap::new(),
            queues: None,
            held: 0,
            next_pkid: 0,
            expiry: 0,
            link: None,
            generation: 0,
        }
    }

    /// The session's messages, to read.
    pub fn queued(&self) -> &Queues {
        self.queues.as_deref().unwrap_or(&NO_QUEUES)
    }

    /// The session's messages, to change (made if it has none).
    pub fn queues(&mut self) -> &mut Queues {
        self.queues.get_or_insert_default()
    }

    /// PUBREL: the client's QoS 2 message `pkid` is released.
    pub fn released(&mut self, pkid: u16) {
        if let Some(q) = self.queues.as_deref_mut() {
            q.incoming_qos2.retain(|&id| id != pkid);
        }
    }

    /// Drops the queues if they are empty.
    pub fn trim(&mut self) {
        if self.queues.as_ref().is_some_and(|q| {
            q.pending.is_empty() && q.inflight.is_empty() && q.incoming_qos2.is_empty()
        }) {
            self.queues = None;
        }
    }

    /// Queues a message for the client, within `max_bytes` for this client and
    /// `max_total` for all (`total` counts every session's bytes).
    pub fn offer(
        &mut self,
        d: Delivery,
        max_bytes: usize,
        total: &IntGauge,
        max_total: usize,
    ) -> Offered {
        if self.link.is_none() && d.qos == 0 {
            return Offered::NotKept;
        }
        let size = d.size();
        if self.held as usize + size > max_bytes.min(u32::MAX as usize)
            || self.queued().pending.len() >= MAX_QUEUED_MESSAGES
        {
            return Offered::Full;
        }
        if total.get() + size as i64 > max_total as i64 {
            return Offered::Full;
        }
        total.add(size as i64);
        self.hold(size);
        self.queues().pending.push_back(d);
        if let Some(link) = &self.link {
            link.signals.wake();
        }
        Offered::Queued
    }

    /// Takes what may be sent now: QoS 0 messages, and QoS 1 and 2 messages while fewer
    /// than `quota` are unacknowledged, each QoS 1 or 2 message given a packet id and
    /// kept in flight. Expired messages are dropped; returns them counted.
    pub fn take_sendable(
        &mut self,
        conn: ConnId,
        quota: u16,
        total: &IntGauge,
    ) -> (Vec<(u16, Delivery)>, usize) {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut expired = 0;
        // A connection that was taken over sends nothing more.
        if self.link.as_ref().map(|l| l.conn) != Some(conn) {
            return (out, expired);
        }
        let Some(q) = self.queues.as_deref_mut() else {
            return (out, expired);
        };
        while let Some(front) = q.pending.front() {
            if front.qos > 0 && q.inflight.len() >= usize::from(quota) {
                break;
            }
            let d = q.pending.pop_front().expect("a front");
            if d.expired(now) {
                release(&mut self.held, d.size(), total);
                expired += 1;
                continue;
            }
            if d.qos == 0 {
                release(&mut self.held, d.size(), total);
                out.push((0, d));
            } else {
                let pkid = next_packet_id(&mut self.next_pkid, &q.inflight);
                q.inflight.push_back((pkid, Flight::Sent(d.clone())));
                out.push((pkid, d));
            }
        }
        (out, expired)
    }

    fn hold(&mut self, size: usize) {
        self.held = self
            .held
            .saturating_add(u32::try_from(size).unwrap_or(u32::MAX));
    }

    /// Takes message `pkid` out of flight if `which` says it is the one; releases its
    /// bytes.
    fn land(&mut self, pkid: u16, total: &IntGauge, which: impl Fn(&Flight) -> bool) {
        let Some(q) = self.queues.as_deref_mut() else {
            return;
        };
        if let Some(i) = q.inflight.iter().position(|(p, f)| *p == pkid && which(f))
            && let Some((_, Flight::Sent(d))) = q.inflight.remove(i)
        {
            release(&mut self.held, d.size(), total);
        }
    }

    /// PUBACK: the QoS 1 message `pkid` is delivered.
    pub fn acked(&mut self, pkid: u16, total: &IntGauge) {
        self.land(pkid, total, |f| matches!(f, Flight::Sent(d) if d.qos == 1));
    }

    /// PUBREC: the QoS 2 message `pkid` is received; returns whether a PUBREL is due.
    pub fn received(&mut self, pkid: u16, total: &IntGauge) -> bool {
        // Unknown: answer with PUBREL anyway, so the client can complete (MQTT 5 would
        // say 0x92; a 3.1.1 client has no other way out).
        let Some(q) = self.queues.as_deref_mut() else {
            return true;
        };
        let Some(slot) = q.inflight.iter_mut().find(|(p, _)| *p == pkid) else {
            return true;
        };
        if let Flight::Sent(d) = std::mem::replace(&mut slot.1, Flight::Released) {
            release(&mut self.held, d.size(), total);
        }
        true
    }

    /// PUBCOMP: the QoS 2 message `pkid` is done.
    pub fn completed(&mut self, pkid: u16) {
        if let Some(q) = self.queues.as_deref_mut() {
            q.inflight
                .retain(|(p, f)| !(*p == pkid && matches!(f, Flight::Released)));
        }
    }

    /// A message that could not be sent (over the client's packet size): forgotten.
    pub fn unsendable(&mut self, pkid: u16, total: &IntGauge) {
        self.land(pkid, total, |_| true);
    }

    /// Forgets everything queued, in flight either way (the session ends).
    pub fn clear(&mut self, total: &IntGauge) {
        total.sub(self.held as i64);
        self.held = 0;
        self.queues = None;
    }

    /// A message that was in flight when weir stopped, put back in flight (`None`: a
    /// QoS 2 message released and waiting for PUBCOMP).
    pub fn restore_in_flight(&mut self, pkid: u16, d: Option<Delivery>, total: &IntGauge) {
        let flight = match d {
            Some(d) => {
                self.hold(d.size());
                total.add(d.size() as i64);
                Flight::Sent(d)
            }
            None => Flight::Released,
        };
        self.queues().inflight.push_back((pkid, flight));
        self.next_pkid = self.next_pkid.max(pkid);
    }

    /// The messages queued and in flight, for saving.
    pub fn saved_queue(&self) -> SavedQueue {
        let q = self.queued();
        SavedQueue {
            client_id: self.client_id.to_string(),
            inflight: q
                .inflight
                .iter()
                .map(|(p, f)| {
                    (
                        *p,
                        match f {
                            Flight::Sent(d) => Some(SavedMessage::from_delivery(d)),
                            Flight::Released => None,
                        },
                    )
                })
                .collect(),
            pending: q.pending.iter().map(SavedMessage::from_delivery).collect(),
        }
    }

    /// Bytes held for the client.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held as usize
    }

    /// Messages waiting to be sent.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.queued().pending.len()
    }
}

/// The next packet id after `last` that no message in flight has.
fn next_packet_id(last: &mut u16, inflight: &VecDeque<(u16, Flight)>) -> u16 {
    loop {
        *last = last.checked_add(1).unwrap_or(1);
        let id = *last;
        if !inflight.iter().any(|(p, _)| *p == id) {
            return id;
        }
    }
}

/// Takes `size` bytes off a session's `held` and the broker's `total`.
fn release(held: &mut u32, size: usize, total: &IntGauge) {
    *held = held.saturating_sub(u32::try_from(size).unwrap_or(u32::MAX));
    total.sub(size as i64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(qos: u8) -> Delivery {
        Delivery {
            topic: Arc::from("t"),
            payload: Bytes::from_static(b"12345"),
            qos,
            retain: false,
            properties: None,
            expires_at: None,
            subscription_ids: Vec::new(),
        }
    }

    fn attach(s: &mut Session) {
        s.link = Some(Link {
            conn: 1,
            signals: Arc::default(),
        });
    }

    #[test]
    fn in_flight_messages_are_bounded_by_the_quota_and_freed_by_acknowledgements() {
        let total = IntGauge::new("t", "t").unwrap();
        let mut s = Session::new(Arc::from("c"));
        attach(&mut s);
        for q in [1, 2, 1, 0] {
            assert_eq!(s.offer(msg(q), 1 << 20, &total, 1 << 30), Offered::Queued);
        }
        let held = total.get() as usize;
        assert_eq!(held, 4 * msg(0).size());
        let (sent, _) = s.take_sendable(1, 2, &total);
        // Two in flight; the third QoS 1 waits, and the QoS 0 behind it with it.
        assert_eq!(
            sent.iter().map(|(p, d)| (*p, d.qos)).collect::<Vec<_>>(),
            [(1, 1), (2, 2)]
        );
        assert_eq!(s.pending(), 2);
        s.acked(1, &total);
        assert!(s.received(2, &total));
        let (sent, _) = s.take_sendable(1, 2, &total);
        assert_eq!(
            sent.iter().map(|(p, d)| (*p, d.qos)).collect::<Vec<_>>(),
            [(3, 1), (0, 0)]
        );
        // 2 is released, waiting for PUBCOMP; 3 waits for PUBACK.
        assert_eq!(s.queued().inflight.len(), 2);
        s.completed(2);
        s.acked(3, &total);
        assert!(s.queued().inflight.is_empty());
        assert_eq!((s.held(), total.get() as usize), (0, 0));
    }

    /// An idle session holds no queues: they are made with a message, kept while
    /// anything is in them, and given back by `trim` once all are empty.
    #[test]
    fn queues_are_made_when_used_and_given_back_when_empty() {
        let total = IntGauge::new("t", "t").unwrap();
        let mut s = Session::new(Arc::from("c"));
        attach(&mut s);
        assert!(s.queues.is_none());
        // Reading and releasing an unknown id make nothing.
        s.released(7);
        s.acked(7, &total);
        assert!(s.queued().pending.is_empty() && s.queues.is_none());
        assert_eq!(s.offer(msg(1), 1 << 20, &total, 1 << 30), Offered::Queued);
        let (sent, _) = s.take_sendable(1, 10, &total);
        assert_eq!(sent.len(), 1);
        s.trim();
        assert!(s.queues.is_some(), "a message in flight keeps them");
        s.acked(sent[0].0, &total);
        s.queues().incoming_qos2.push(9);
        s.trim();
        assert!(s.queues.is_some(), "a QoS 2 id not yet released keeps them");
        s.released(9);
        s.trim();
        assert!(s.queues.is_none());
        assert_eq!(total.get(), 0);
    }

    #[test]
    fn offline_sessions_keep_qos1_and_bounds_refuse_the_rest() {
        let total = IntGauge::new("t", "t").unwrap();
        let mut s = Session::new(Arc::from("c"));
        assert_eq!(s.offer(msg(0), 1 << 20, &total, 1 << 30), Offered::NotKept);
        assert_eq!(s.offer(msg(1), 1 << 20, &total, 1 << 30), Offered::Queued);
        let size = msg(1).size();
        // Over the client's bytes, then over the broker's total.
        assert_eq!(s.offer(msg(1), size, &total, 1 << 30), Offered::Full);
        assert_eq!(s.offer(msg(1), 1 << 20, &total, size), Offered::Full);
        assert_eq!(total.get() as usize, size);
        s.clear(&total);
        assert_eq!(total.get() as usize, 0);
    }

    #[test]
    fn expired_messages_are_not_sent_and_packet_ids_skip_those_in_use() {
        let total = IntGauge::new("t", "t").unwrap();
        let mut s = Session::new(Arc::from("c"));
        attach(&mut s);
        let mut old = msg(1);
        old.expires_at = Some(Instant::now());
        s.offer(old, 1 << 20, &total, 1 << 30);
        s.offer(msg(1), 1 << 20, &total, 1 << 30);
        let (sent, expired) = s.take_sendable(1, 10, &total);
        assert_eq!((sent.len(), expired), (1, 1));
        // Packet ids wrap past 65,535 to 1, skipping ids still in flight.
        s.next_pkid = u16::MAX;
        s.offer(msg(1), 1 << 20, &total, 1 << 30);
        let (sent, _) = s.take_sendable(1, 10, &total);
        assert_eq!(sent[0].0, 2, "1 is still in flight");
    }
}
