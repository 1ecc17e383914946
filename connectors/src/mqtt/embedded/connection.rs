//! A client's connection, served: from its CONNACK (what was in flight sent again, the
//! queue flushed) through the loop that reads its packets, wakes on its signals and
//! watches its keep-alive, to its end: parked when idle (`park.rs`), or its session
//! let go and its will seen to. Each packet goes to the room that handles it
//! (`publishing.rs`, `subscriptions.rs`); what is written to the client is written here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Reason;
use tokio_util::sync::CancellationToken;

use super::broker::{Broker, Sleeper, lock};
use super::client::{Admitted, Conn, Life};
use super::delivery::Delivery;
use super::error::ClientError;
use super::limits::{IDLE_WITHOUT_KEEP_ALIVE, PARK_AFTER, WRITE_TIMEOUT};
use super::park::{Parker, Resumable};
use super::session::Flight;
use super::signals::{EndSignal, Signals};
use super::wire::{Inbound, OutPublish, Outbound, Wire};

/// How a connection ended, when it ended without an error.
pub(super) enum End {
    /// It is idle: park it (see `park.rs`).
    Park,
    /// The client sent DISCONNECT.
    Disconnect {
        with_will: bool,
        session_expiry: Option<u32>,
    },
    /// The client closed the connection without DISCONNECT.
    Closed,
    /// weir is shutting down.
    Shutdown,
}

impl Broker {
    /// Serves a client let in, from its CONNACK until it goes or is parked; then lets go
    /// of its session and sees to its will.
    pub(super) async fn serve_client(
        self,
        client: Admitted,
        cancel: CancellationToken,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), ClientError> {
        let Admitted {
            mut conn,
            will,
            keep_alive,
            connack,
        } = client;
        self.inner.metrics.broker_connections.inc();
        // MQTT 3.1.1 §3.1.2.10: close after 1.5 keep-alive periods of silence; a client
        // that asked for none gets an hour.
        let idle = if keep_alive == 0 {
            IDLE_WITHOUT_KEEP_ALIVE
        } else {
            Duration::from_millis(u64::from(keep_alive) * 1500)
        };
        let mut life = Life {
            will: will.map(Box::new),
            idle_ms: u32::try_from(idle.as_millis()).unwrap_or(u32::MAX),
            deadline: Instant::now() + idle,
            cancel,
            _permit: permit,
        };
        let started = async {
            Box::pin(send(&mut conn.wire, connack)).await?;
            Box::pin(self.resend_in_flight(&mut conn)).await?;
            Box::pin(self.flush(&mut conn)).await
        }
        .await;
        let result = match started {
            // Most devices say nothing for a while after connecting: parked at once.
            Ok(()) => self.serve_conn(&mut conn, &mut life, Instant::now()).await,
            Err(e) => Err(e),
        };
        self.finish(conn, life, result)
    }

    /// Serves a parked connection again, woken (see `park.rs`).
    pub(super) async fn resume(self, mut conn: Conn, mut life: Life) {
        self.inner.metrics.broker_parked.dec();
        let result = match conn.wire.resume(self.inner.limits.max_packet) {
            Ok(()) => {
                // Not parked again before it had a moment to read what woke it.
                let park_at = Instant::now() + PARK_AFTER;
                self.serve_conn(&mut conn, &mut life, park_at).await
            }
            Err(e) => Err(ClientError::Resume(e)),
        };
        if let Err(e) = self.finish(conn, life, result) {
            tracing::debug!(error = %e, "mqtt connection closed");
        }
    }

    /// After serving: parks the connection, or lets go of its session and sees to its will.
    pub(super) fn finish(
        self,
        mut conn: Conn,
        life: Life,
        result: Result<End, ClientError>,
    ) -> Result<(), ClientError> {
        let result = match result {
            Ok(End::Park) => match conn.wire.park() {
                Ok(()) => {
                    // What it holds empty is given back while it sleeps.
                    conn.acks = None;
                    lock(&conn.session).trim();
                    let Some(Some((parker, _))) = self.inner.parker.get() else {
                        unreachable!("a connection parks only where there is a parker")
                    };
                    let parker = parker.clone();
                    self.inner.metrics.broker_parked.inc();
                    parker.park(Box::new(Sleeper {
                        broker: self,
                        conn,
                        life,
                    }));
                    return Ok(());
                }
                Err(e) => Err(ClientError::Park(e)),
            },
            other => other,
        };
        self.inner.metrics.broker_connections.dec();
        let Conn {
            id, peer, session, ..
        } = conn;
        let (will_due, expiry_now) = match &result {
            Ok(End::Disconnect {
                with_will,
                session_expiry,
            }) => (*with_will, *session_expiry),
            Ok(End::Shutdown | End::Park) => (false, None),
            Ok(End::Closed) | Err(_) => (true, None),
        };
        let left = self.detach(&peer.client_id, &session, id, expiry_now);
        if will_due
            && let Some(will) = life.will
            && let Some((generation, expiry)) = left
        {
            self.will_due(*will, peer, session, generation, expiry);
        }
        result.map(|_| ())
    }

    /// The parker, made with the first connection that could use it.
    pub(super) fn parker(&self) -> bool {
        self.inner
            .parker
            .get_or_init(|| {
                let alive: std::sync::Weak<dyn Send + Sync> = Arc::downgrade(&self.inner) as _;
                match (Parker::start(alive), tokio::runtime::Handle::try_current()) {
                    (Ok(p), Ok(handle)) => Some((p, handle)),
                    (Err(e), _) => {
                        tracing::warn!(error = %e, "idle connections cannot be parked: each keeps its task");
                        None
                    }
                    (_, Err(_)) => None,
                }
            })
            .is_some()
    }

    /// Serves one connected client until it goes, is let go, weir stops, or it is idle
    /// and may be parked (not before `park_at`).
    pub(super) async fn serve_conn(
        &self,
        c: &mut Conn,
        life: &mut Life,
        mut park_at: Instant,
    ) -> Result<End, ClientError> {
        loop {
            let parkable = c.parkable
                && c.acks.as_ref().is_none_or(|a| a.is_empty())
                && c.wire.is_quiet()
                && self.parker();
            let timer = if parkable {
                life.deadline.min(park_at)
            } else {
                life.deadline
            };
            tokio::select! {
                biased;
                _ = life.cancel.cancelled() => {
                    Box::pin(c.disconnect(Reason::ServerShuttingDown)).await;
                    return Ok(End::Shutdown);
                }
                _ = c.signals.wake.notified() => {
                    c.signals.take_pending();
                    match c.signals.ended() {
                        Some(EndSignal::Kicked) => {
                            Box::pin(c.disconnect(Reason::SessionTakenOver)).await;
                            return Err(ClientError::TakenOver);
                        }
                        Some(EndSignal::Slow) => return Err(ClientError::Slow {
                            bytes: self.inner.limits.max_queued_bytes,
                        }),
                        None => {}
                    }
                    for pkid in c.signals.take_acked() {
                        Box::pin(c.acknowledged(pkid)).await?;
                    }
                    Box::pin(self.flush(c)).await?;
                }
                incoming = c.wire.recv() => {
                    let packet = match incoming {
                        None => return Ok(End::Closed),
                        Some(Err(e)) => {
                            if e.is_too_large() {
                                Box::pin(c.disconnect(Reason::PacketTooLarge)).await;
                            } else {
                                Box::pin(c.disconnect(Reason::MalformedPacket)).await;
                            }
                            return Err(e.into());
                        }
                        Some(Ok(p)) => p,
                    };
                    let now = Instant::now();
                    life.deadline = now + Duration::from_millis(u64::from(life.idle_ms));
                    park_at = now + PARK_AFTER;
                    // Boxed, as are the flushes: the task then holds, while the client is
                    // idle, only what waiting takes, not room for the largest handling.
                    if let Some(end) = Box::pin(self.handle(c, packet)).await? {
                        return Ok(end);
                    }
                }
                _ = tokio::time::sleep_until(timer.into()) => {
                    if Instant::now() >= life.deadline {
                        Box::pin(c.disconnect(Reason::KeepAliveTimeout)).await;
                        return Err(ClientError::KeepAlive);
                    }
                    // Quiet still: the read just polled may have taken part of a packet.
                    if parkable && c.wire.is_quiet() {
                        return Ok(End::Park);
                    }
                }
            }
        }
    }

    /// Handles one packet from the client; `Some` when it ends the connection.
    pub(super) async fn handle(
        &self,
        c: &mut Conn,
        packet: Inbound,
    ) -> Result<Option<End>, ClientError> {
        match packet {
            Inbound::Publish(p) => self.incoming_publish(c, p).await?,
            Inbound::PubAck(pkid) => {
                lock(&c.session).acked(pkid, &self.inner.metrics.broker_queued_bytes);
                self.flush(c).await?;
            }
            Inbound::PubRec(pkid) => {
                if lock(&c.session).received(pkid, &self.inner.metrics.broker_queued_bytes) {
                    send(&mut c.wire, Outbound::PubRel(pkid)).await?;
                }
            }
            Inbound::PubRel(pkid) => {
                lock(&c.session).released(pkid);
                send(&mut c.wire, Outbound::PubComp(pkid)).await?;
            }
            Inbound::PubComp(pkid) => {
                lock(&c.session).completed(pkid);
                self.flush(c).await?;
            }
            Inbound::Subscribe { pkid, filters, id } => {
                // Boxed: rare, and the connection's future need not keep room for it.
                Box::pin(self.subscribe(c, pkid, filters, id)).await?;
            }
            Inbound::Unsubscribe { pkid, filters } => {
                self.unsubscribe(c, pkid, filters).await?;
            }
            Inbound::PingReq => {
                send(&mut c.wire, Outbound::PingResp).await?;
            }
            Inbound::Disconnect {
                with_will,
                session_expiry,
            } => {
                return Ok(Some(End::Disconnect {
                    with_will,
                    session_expiry,
                }));
            }
        }
        Ok(None)
    }

    /// Sends again what was in flight when the client last went away: PUBLISH marked DUP,
    /// or PUBREL.
    pub(super) async fn resend_in_flight(&self, c: &mut Conn) -> Result<(), ClientError> {
        let again: Vec<(u16, Option<Delivery>)> = lock(&c.session)
            .queued()
            .inflight
            .iter()
            .map(|(pkid, f)| {
                (
                    *pkid,
                    match f {
                        Flight::Sent(d) => Some(d.clone()),
                        Flight::Released => None,
                    },
                )
            })
            .collect();
        for (pkid, d) in again {
            match d {
                Some(d) => {
                    c.publish(pkid, &d, true, self).await?;
                }
                None => {
                    send(&mut c.wire, Outbound::PubRel(pkid)).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends what the session has queued, as far as the client's receive maximum allows.
    pub(super) async fn flush(&self, c: &mut Conn) -> Result<(), ClientError> {
        let total = &self.inner.metrics.broker_queued_bytes;
        let (batch, expired) = lock(&c.session).take_sendable(c.id, c.quota, total);
        for _ in 0..expired {
            self.dropped("expired");
        }
        for (pkid, d) in batch {
            c.publish(pkid, &d, false, self).await?;
        }
        // More may have come meanwhile; the wake-up is remembered if so.
        Ok(())
    }
}

impl Resumable for Sleeper {
    fn signals(&self) -> &Signals {
        &self.conn.signals
    }

    fn deadline(&self) -> Instant {
        self.life.deadline
    }

    fn stopping(&self) -> bool {
        self.life.cancel.is_cancelled()
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.conn.wire.parked_fd().unwrap_or(-1)
    }

    fn resume(self: Box<Self>) {
        let Some(Some((_, runtime))) = self.broker.inner.parker.get() else {
            return;
        };
        let runtime = runtime.clone();
        let Sleeper { broker, conn, life } = *self;
        runtime.spawn(broker.resume(conn, life));
    }
}

impl Conn {
    /// The rules hold message `pkid`: sends every acknowledgement now due, in order.
    pub(super) async fn acknowledged(&mut self, pkid: u16) -> Result<(), ClientError> {
        let Some(acks) = self.acks.as_deref_mut() else {
            return Ok(());
        };
        if let Some(e) = acks.iter_mut().find(|(id, _, done)| *id == pkid && !done) {
            e.2 = true;
        }
        while let Some(&(id, qos, true)) = acks.front() {
            acks.pop_front();
            let ack = if qos == 1 {
                Outbound::PubAck(id)
            } else {
                Outbound::PubRec(id)
            };
            send(&mut self.wire, ack).await?;
        }
        Ok(())
    }

    /// Sends one message, with a topic alias where the client takes them.
    pub(super) async fn publish(
        &mut self,
        pkid: u16,
        d: &Delivery,
        dup: bool,
        broker: &Broker,
    ) -> Result<(), ClientError> {
        let set = self.aliases.as_ref().map_or(0, |a| a.out.len());
        let (topic, alias, new_alias) =
            match self.aliases.as_ref().and_then(|a| a.out.get(&d.topic)) {
                Some(&a) => ("", Some(a), false),
                None if set < usize::from(self.alias_max) => {
                    let a = set as u16 + 1;
                    self.aliases
                        .get_or_insert_with(Box::default)
                        .out
                        .insert(d.topic.clone(), a);
                    (&*d.topic, Some(a), true)
                }
                None => (&*d.topic, None, false),
            };
        let expiry = d.expires_at.map(|t| {
            let left = t.saturating_duration_since(Instant::now());
            u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0))
                .unwrap_or(u32::MAX)
                .max(1)
        });
        let out = Outbound::Publish(OutPublish {
            topic,
            pkid,
            qos: d.qos,
            retain: d.retain,
            dup,
            payload: d.payload.clone(),
            properties: d.properties.as_deref(),
            alias,
            expiry,
            subscription_ids: &d.subscription_ids,
        });
        // A subscriber found too slow meanwhile is let go mid-write.
        let sent = tokio::select! {
            sent = send(&mut self.wire, out) => sent,
            _ = self.signals.ending() => return Err(ClientError::LetGo),
        };
        self.signals.rewake();
        let sent = sent?;
        if !sent {
            broker.dropped("too_large");
            if new_alias && let Some(a) = self.aliases.as_mut() {
                a.out.remove(&d.topic);
            }
            if pkid != 0 {
                lock(&self.session).unsendable(pkid, &broker.inner.metrics.broker_queued_bytes);
            }
        }
        Ok(())
    }

    /// Tells an MQTT 5 client which rule it broke, and reads (and drops) what it still
    /// sends for a moment before closing, so that it gets to read why instead of failing
    /// on a reset connection.
    pub(super) async fn refuse(&mut self, reason: Reason) {
        self.disconnect(reason).await;
        if self.v5 {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = self.wire.recv().await {}
            })
            .await;
        }
    }

    /// Tells an MQTT 5 client why it is let go (best effort: it may not be reading).
    pub(super) async fn disconnect(&mut self, reason: Reason) {
        if self.v5 {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.wire.send(Outbound::Disconnect(reason)),
            )
            .await;
        }
    }
}

/// Sends a packet, giving the client [`WRITE_TIMEOUT`] to take it. A PUBLISH larger than
/// the client accepts is not sent (`Ok(false)`).
pub(super) async fn send(wire: &mut Wire, packet: Outbound<'_>) -> Result<bool, ClientError> {
    tokio::time::timeout(WRITE_TIMEOUT, wire.send(packet))
        .await
        .map_err(|_| ClientError::WriteTimeout)?
        .map_err(ClientError::from)
}
