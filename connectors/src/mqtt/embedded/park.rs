//! Idle connections without a task.
//!
//! Most devices are idle most of the time. A tokio task per connection holds its future
//! (the state of the serving loop, about 1.4 KB), tokio's registration of the socket
//! (385 bytes, cache-aligned) and a timer; with tens of thousands of devices that is most
//! of the broker's memory. So a plain TCP connection with nothing to read, write or
//! acknowledge is parked: its socket leaves tokio for an epoll set of the parker's own
//! thread, its state (a box of what the serving loop needs to go on: a [`Resumable`])
//! sits in a slot, and its task ends. The parker hands it back to the runtime, as a new
//! task, when the socket becomes readable, when something is to be sent to the client or
//! it is told to end (its [`Signals`] wake it), when its keep-alive runs out, or when weir
//! stops.
//!
//! Who resumes a parked connection is decided by one atomic swap of
//! [`Signals::parked`] (its parker's number and its slot, see [`mark`]): whoever takes
//! that out of it resumes it, so a connection is resumed exactly once per parking. The
//! signals name the parker by a number, not a pointer (see `signals.rs`, which keeps the
//! process's parkers by number): they are one small allocation per connection, kept as
//! small as can be.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::signals::{Claim, MAX_PARKERS, MAX_SLOTS, PARKERS, Signals, mark};

/// What a parked connection needs to be served again: see `Broker::resume`.
pub(super) trait Resumable: Send + 'static {
    fn signals(&self) -> &Signals;
    /// When its keep-alive runs out.
    fn deadline(&self) -> Instant;
    /// Whether weir is stopping.
    fn stopping(&self) -> bool;
    /// The socket, for the parker's epoll set.
    fn fd(&self) -> std::os::fd::RawFd;
    /// Serves it again, on the runtime.
    fn resume(self: Box<Self>);
}

/// The waker's token; slots are the others.
const WAKER: Token = Token(usize::MAX);
/// How often the parker looks for keep-alives run out and for weir stopping.
const SWEEP: Duration = Duration::from_secs(1);

/// The parked connections of one broker, and the thread that watches their sockets.
/// (Of one type: a slot is a thin pointer.)
pub(super) struct Parker<T> {
    /// Its number in [`PARKERS`].
    id: u32,
    registry: mio::Registry,
    waker: Waker,
    slots: Mutex<Slots<T>>,
    stopped: AtomicBool,
}

struct Slots<T> {
    entries: Vec<Option<Box<T>>>,
    free: Vec<u32>,
    parked: usize,
}

impl<T: Resumable> Claim for Parker<T> {
    fn claimed(&self, slot: u32) {
        let taken = {
            let mut slots = self.slots();
            self.take(&mut slots, slot)
        };
        if let Some(conn) = taken {
            conn.resume();
        }
    }
}

impl<T: Resumable> Parker<T> {
    /// Starts the parker's thread; it ends once `alive` is gone (the broker was dropped)
    /// and nothing is parked, or on [`Parker::stop`].
    pub(super) fn start(alive: Weak<dyn Send + Sync>) -> std::io::Result<Arc<Self>> {
        let poll = Poll::new()?;
        let mut parkers = PARKERS.lock().unwrap_or_else(|p| p.into_inner());
        let id = match parkers
            .iter()
            .position(|p| p.as_ref().is_none_or(|p| p.strong_count() == 0))
        {
            Some(free) => free,
            None if parkers.len() < MAX_PARKERS => {
                parkers.push(None);
                parkers.len() - 1
            }
            None => return Err(std::io::Error::other("too many parkers in one process")),
        };
        let parker = Arc::new(Parker {
            id: id as u32,
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKER)?,
            slots: Mutex::new(Slots {
                entries: Vec::new(),
                free: Vec::new(),
                parked: 0,
            }),
            stopped: AtomicBool::new(false),
        });
        let weak: Weak<dyn Claim> = Arc::downgrade(&parker) as Weak<Self>;
        parkers[id] = Some(weak);
        drop(parkers);
        let watched = parker.clone();
        std::thread::Builder::new()
            .name("weir-parker".to_owned())
            .spawn(move || watched.watch(poll, alive))?;
        Ok(parker)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots<T>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections parked now.
    pub(super) fn parked(&self) -> usize {
        self.slots().parked
    }

    /// Parks a connection; one that cannot be (its socket cannot join the epoll set, or
    /// weir is stopping) is resumed at once.
    pub(super) fn park(self: &Arc<Self>, conn: Box<T>) {
        let fd = conn.fd();
        if self.stopped.load(Ordering::SeqCst) {
            return conn.resume();
        }
        let slot = {
            let mut slots = self.slots();
            let slot = match slots.free.pop() {
                Some(s) => s,
                None if (slots.entries.len() as u32) < MAX_SLOTS => {
                    slots.entries.push(None);
                    (slots.entries.len() - 1) as u32
                }
                None => {
                    drop(slots);
                    return conn.resume();
                }
            };
            // Marked parked before the socket joins the set (under the lock the watcher
            // takes too), so that a readiness reported at once finds it.
            conn.signals()
                .parked
                .store(mark(self.id, slot), Ordering::SeqCst);
            if let Err(e) =
                self.registry
                    .register(&mut SourceFd(&fd), Token(slot as usize), Interest::READABLE)
            {
                conn.signals().parked.store(0, Ordering::SeqCst);
                slots.free.push(slot);
                drop(slots);
                tracing::warn!(error = %e, "an idle connection could not be parked");
                return conn.resume();
            }
            slots.entries[slot as usize] = Some(conn);
            slots.parked += 1;
            slot
        };
        // Something to do came while parking (its wake found nothing parked yet): the
        // wake left a permit; take it back if no one else did.
        let pending = {
            let slots = self.slots();
            slots.entries[slot as usize]
                .as_ref()
                .is_some_and(|c| c.signals().take_pending())
        };
        if pending {
            self.claim(slot);
        }
    }

    /// Resumes the connection in `slot` if this caller is the one that takes it.
    pub(super) fn claim(&self, slot: u32) {
        let taken = {
            let mut slots = self.slots();
            let Some(Some(conn)) = slots.entries.get(slot as usize) else {
                return;
            };
            if conn
                .signals()
                .parked
                .compare_exchange(mark(self.id, slot), 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return;
            }
            self.take(&mut slots, slot)
        };
        if let Some(conn) = taken {
            conn.resume();
        }
    }

    fn take(&self, slots: &mut Slots<T>, slot: u32) -> Option<Box<T>> {
        let conn = slots.entries.get_mut(slot as usize)?.take()?;
        let _ = self.registry.deregister(&mut SourceFd(&conn.fd()));
        slots.free.push(slot);
        slots.parked -= 1;
        Some(conn)
    }

    /// Resumes every parked connection (weir is stopping) and ends the thread.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    fn watch(self: Arc<Self>, mut poll: Poll, alive: Weak<dyn Send + Sync>) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            let timeout = next_sweep.saturating_duration_since(Instant::now());
            if let Err(e) = poll.poll(&mut events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "the broker's parker cannot wait for its sockets");
                std::thread::sleep(SWEEP);
            }
            for event in &events {
                if event.token() != WAKER {
                    self.claim(event.token().0 as u32);
                }
            }
            let stopping = self.stopped.load(Ordering::SeqCst);
            let now = Instant::now();
            if stopping || now >= next_sweep {
                next_sweep = now + SWEEP;
                let due: Vec<u32> = {
                    let slots = self.slots();
                    slots
                        .entries
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| {
                            let c = c.as_ref()?;
                            (stopping || c.stopping() || c.deadline() <= now).then_some(i as u32)
                        })
                        .collect()
                };
                for slot in due {
                    self.claim(slot);
                }
                if stopping || (alive.strong_count() == 0 && self.parked() == 0) {
                    return;
                }
            }
        }
    }
}
