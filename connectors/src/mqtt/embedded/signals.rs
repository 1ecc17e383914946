//! What other tasks tell a connection, and how a parked connection is found again.
//!
//! [`Signals`] is one small allocation per connection, shared with whoever has news for
//! it: the router (something to send), the rules (an acknowledgement due), a takeover or
//! the queue bounds (an end, [`EndSignal`]). While the connection is parked (see
//! `park.rs`) its signals hold its parker's number and its slot ([`mark`]): a wake takes
//! that out with one atomic swap and hands the connection back to its parker, found in
//! the process's registry of parkers by number ([`PARKERS`], [`unmark`]). A number, not a
//! pointer: the signals of every idle connection stay as small as can be.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// Why a connection is to end, as other tasks tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndSignal {
    /// Another connection took the session over.
    Kicked = 1,
    /// The client fell too far behind.
    Slow = 2,
}

/// What other tasks tell a connection: one small allocation, so that an idle connection
/// holds no channel or token of its own (each costs hundreds of bytes, and thousands of
/// devices stay connected and idle).
#[derive(Default)]
pub struct Signals {
    /// Woken when there is something to send, an acknowledgement due, or an end: see
    /// [`Signals::wake`].
    pub wake: Notify,
    /// Set by every wake, cleared by the connection when it looks: a connection that
    /// parks finds here a wake that came while it was parking.
    pending: AtomicBool,
    /// While the connection is parked, its parker and slot (see `park.rs`); else 0.
    pub(super) parked: AtomicU32,
    /// 0 while the connection may go on; else an [`EndSignal`].
    end: AtomicU8,
    /// Packet ids of the client's QoS 1 and 2 messages whose outputs the rules now hold.
    acked: std::sync::Mutex<Vec<u16>>,
}

impl Signals {
    /// Tells the connection to end; the first reason given stays.
    pub fn end(&self, why: EndSignal) -> bool {
        let first = self
            .end
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.wake();
        }
        first
    }

    /// Wakes the connection: its task, or the parker if it is parked.
    pub fn wake(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let parked = self.parked.swap(0, Ordering::SeqCst);
        if parked != 0
            && let (Some(parker), slot) = unmark(parked)
        {
            parker.claimed(slot);
        }
    }

    /// Whether a wake came since the last call.
    pub fn take_pending(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst)
    }

    /// Why the connection is to end, if it is.
    pub fn ended(&self) -> Option<EndSignal> {
        match self.end.load(Ordering::Acquire) {
            1 => Some(EndSignal::Kicked),
            2 => Some(EndSignal::Slow),
            _ => None,
        }
    }

    /// Resolves once the connection is told to end, for a connection busy writing.
    /// It takes the wakes that come meanwhile: see [`Signals::rewake`].
    pub async fn ending(&self) -> EndSignal {
        loop {
            if let Some(why) = self.ended() {
                return why;
            }
            self.wake.notified().await;
        }
    }

    /// Once done with [`Signals::ending`]: wakes the connection again if a wake came
    /// that it has not yet seen (one [`Signals::ending`] may have taken).
    pub fn rewake(&self) {
        if self.pending.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// The rules hold the outputs of the client's message `pkid`.
    pub fn acked(&self, pkid: u16) {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pkid);
        self.wake();
    }

    /// The packet ids acknowledged since the last call, in the order they were.
    pub fn take_acked(&self) -> Vec<u16> {
        std::mem::take(&mut *self.acked.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What a connection's wake needs of its parker.
pub(super) trait Claim: Send + Sync {
    /// Resumes the connection in `slot`, whose number the caller took out of its
    /// signals.
    fn claimed(&self, slot: u32);
}

/// The live parkers of the process (one per broker), by number.
pub(super) static PARKERS: Mutex<Vec<Option<Weak<dyn Claim>>>> = Mutex::new(Vec::new());
/// Parkers at once at most (numbers fit in the top 8 bits of [`Signals::parked`]).
pub(super) const MAX_PARKERS: usize = 255;
/// Slots per parker at most (slot + 1 fits in the low 24 bits).
pub(super) const MAX_SLOTS: u32 = (1 << 24) - 2;

/// What [`Signals::parked`] holds while a connection is parked: its parker and slot.
pub(super) fn mark(parker: u32, slot: u32) -> u32 {
    (parker << 24) | (slot + 1)
}

/// The parker and slot a value of [`Signals::parked`] names (not 0).
fn unmark(value: u32) -> (Option<Arc<dyn Claim>>, u32) {
    let parker = PARKERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get((value >> 24) as usize)
        .and_then(|p| p.as_ref()?.upgrade());
    (parker, (value & 0x00FF_FFFF) - 1)
}
