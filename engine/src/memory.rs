//! A rule's memory budget: what the thread evaluating a batch allocates is counted, and
//! the evaluation is stopped when it goes over.
//!
//! The counting allocator ([`Counting`]), which each program installs as its global
//! allocator over the allocator it chooses, adds every allocation and subtracts every
//! release of a thread that is inside a [`Scope`], at the cost of one thread-local read
//! for the threads that are not. Going over the scope's limit does not refuse the
//! allocation (an allocator that says no aborts the process); it marks the scope, and
//! the evaluation stops at its next check: between the steps of a batch ([`check`]), in
//! every SQL function before and after it runs, and in the loops of the functions that
//! build large values. The functions whose output a count or a repeated argument sizes
//! [`reserve`] what they would build before they build it, so that one call cannot take
//! far more than the budget before the check after it.
//!
//! The count is per thread and net: memory released that was allocated before the scope
//! began does not go below zero, so a scope is charged at least what it still holds.

// The one place weir allows unsafe code: implementing `GlobalAlloc` is unsafe by
// definition. Every call is passed on to the allocator beneath unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

use crate::error::{Classify, ErrorClass};

/// The allocator that counts, for the threads inside a [`Scope`], what they allocate
/// through the allocator `A` beneath it. The library installs no allocator: a program
/// that runs rules within memory budgets installs this one over the allocator it chooses
/// (weir's binary over mimalloc, the engine's tests over the system's):
///
/// ```no_run
/// use weir_engine::memory::Counting;
///
/// #[global_allocator]
/// static ALLOCATOR: Counting<std::alloc::System> = Counting::new(std::alloc::System);
/// # fn main() {}
/// ```
///
/// Without it nothing is counted: a [`Scope`] never goes over, and only the limits of the
/// functions themselves (`repeat`, `range`, ...) hold.
pub struct Counting<A> {
    inner: A,
}

impl<A: GlobalAlloc> Counting<A> {
    /// Counting over `inner`.
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }
}

struct Meter {
    /// The scope's limit in bytes; 0 outside any scope.
    limit: Cell<usize>,
    /// Bytes allocated and not released since the scope began (or last [`restart_at`]).
    used: Cell<usize>,
    /// The most `used` has been since then.
    peak: Cell<usize>,
    /// The largest total a refused [`reserve`] would have made, 0 if none was refused.
    refused: Cell<usize>,
    /// The most `used` has been since the scope began, across restarts.
    high: Cell<usize>,
}

impl Meter {
    fn cells(&self) -> [&Cell<usize>; 5] {
        [
            &self.limit,
            &self.used,
            &self.peak,
            &self.refused,
            &self.high,
        ]
    }
}

thread_local! {
    static METER: Meter = const {
        Meter {
            limit: Cell::new(0),
            used: Cell::new(0),
            peak: Cell::new(0),
            refused: Cell::new(0),
            high: Cell::new(0),
        }
    };
}

#[inline]
fn grew(bytes: usize) {
    // `try_with`: nothing is counted while the thread's locals are being torn down.
    let _ = METER.try_with(|m| {
        if m.limit.get() != 0 {
            let used = m.used.get().saturating_add(bytes);
            m.used.set(used);
            if used > m.peak.get() {
                m.peak.set(used);
            }
        }
    });
}

#[inline]
fn shrank(bytes: usize) {
    let _ = METER.try_with(|m| {
        if m.limit.get() != 0 {
            m.used.set(m.used.get().saturating_sub(bytes));
        }
    });
}

// SAFETY: every call is passed on to the inner allocator unchanged; the counting beside it touches
// only thread-local cells and never allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            shrank(layout.size() - new_size);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

/// The budget of the evaluation running on this thread, until dropped.
#[must_use = "the budget applies while the scope lives"]
pub struct Scope {
    previous: [usize; 5],
}

impl Scope {
    /// Counts this thread's allocations against `limit` bytes (0: no limit) until the
    /// scope is dropped. A scope inside another replaces it while it lives.
    pub fn enter(limit: usize) -> Self {
        METER.with(|m| {
            let previous = m.cells().map(Cell::get);
            for (cell, value) in m.cells().into_iter().zip([limit, 0, 0, 0, 0]) {
                cell.set(value);
            }
            Scope { previous }
        })
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        METER.with(|m| {
            for (cell, value) in m.cells().into_iter().zip(self.previous) {
                cell.set(value);
            }
        });
    }
}

/// Starts this thread's count again, within the same limit, at `held` bytes: what the
/// evaluation still holds from before (the outputs of a first attempt's half). For a
/// second attempt at what went over.
pub fn restart_at(held: usize) {
    METER.with(|m| {
        m.high.set(m.high.get().max(m.peak.get()));
        m.used.set(held);
        m.peak.set(held);
        m.refused.set(0);
    });
}

/// The evaluation went over its budget, or would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// The budget, in bytes.
    pub limit: usize,
    /// The most it held, or would have held, in bytes.
    pub peak: usize,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the rule needed {} to evaluate this batch; its memory budget is {} \
             (--rule-memory-budget)",
            mib(self.peak),
            mib(self.limit)
        )
    }
}

impl std::error::Error for Exceeded {}

/// The rule needs more than its budget for this message: the rule (or the message) is
/// what to change, and running it again the same way fails the same way.
impl Classify for Exceeded {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

fn mib(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{bytes} bytes")
    }
}

/// Whether this thread's evaluation has gone over its budget, or was refused more than
/// it had left (never, outside a scope).
pub fn check() -> Result<(), Exceeded> {
    METER.with(|m| {
        let limit = m.limit.get();
        let peak = m.peak.get().max(m.refused.get());
        if limit != 0 && peak > limit {
            Err(Exceeded { limit, peak })
        } else {
            Ok(())
        }
    })
}

/// The most this thread's evaluation has held at once since its scope began, counted from
/// where each [`restart_at`] puts it: what it did allocate, not what it was refused.
pub fn peak() -> usize {
    METER.with(|m| m.high.get().max(m.peak.get()))
}

/// What this thread's evaluation may still allocate (0 once it went over), or `None`
/// outside a scope.
pub fn available() -> Option<usize> {
    METER.with(|m| {
        let limit = m.limit.get();
        (limit != 0).then(|| {
            if m.peak.get().max(m.refused.get()) > limit {
                0
            } else {
                limit.saturating_sub(m.used.get())
            }
        })
    })
}

/// Refuses, before anything is allocated, a step that would build `bytes` more than this
/// thread's evaluation holds now if that goes over its budget. The refusal marks the
/// scope, so that [`check`] says so too.
pub fn reserve(bytes: usize) -> Result<(), Exceeded> {
    METER.with(|m| {
        let limit = m.limit.get();
        let after = m.used.get().saturating_add(bytes);
        if limit != 0 && after > limit {
            m.refused.set(m.refused.get().max(after));
            return Err(Exceeded { limit, peak: after });
        }
        Ok(())
    })?;
    check()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_counts_what_its_thread_allocates_and_keeps() {
        let scope = Scope::enter(1 << 20);
        let small = vec![0u8; 100 << 10];
        assert_eq!(check(), Ok(()));
        let big = vec![1u8; 2 << 20];
        let over = check().unwrap_err();
        assert_eq!(over.limit, 1 << 20);
        assert!(over.peak >= (2 << 20) + (100 << 10), "{over:?}");
        assert!(
            over.to_string().contains("memory budget is 1.0 MiB"),
            "{over}"
        );
        drop(big);
        // Going over stays marked until the count starts again.
        assert!(check().is_err());
        restart_at(0);
        assert_eq!(check(), Ok(()));
        drop(small); // allocated before the restart: the count stays at zero, not below
        let again = vec![2u8; 900 << 10];
        assert_eq!(check(), Ok(()));
        drop((again, scope));
        // Outside a scope, nothing is limited.
        let _free = vec![0u8; 4 << 20];
        assert_eq!(check(), Ok(()));
    }

    #[test]
    fn reserve_refuses_before_anything_is_allocated() {
        let _scope = Scope::enter(1 << 20);
        assert_eq!(reserve(512 << 10), Ok(()));
        let e = reserve(2 << 20).unwrap_err();
        assert!(e.peak >= 2 << 20);
        assert!(check().is_err(), "the refusal marks the scope");
        assert!(peak() < 1 << 20, "nothing was allocated: {}", peak());
    }

    #[test]
    fn other_threads_are_not_counted() {
        let _scope = Scope::enter(1 << 20);
        std::thread::spawn(|| {
            let v = vec![0u8; 8 << 20];
            std::hint::black_box(&v);
        })
        .join()
        .unwrap();
        assert_eq!(check(), Ok(()));
    }

    #[test]
    fn an_inner_scope_replaces_the_outer_one_while_it_lives() {
        let _outer = Scope::enter(1 << 20);
        {
            let _inner = Scope::enter(8 << 20);
            let v = vec![0u8; 4 << 20];
            std::hint::black_box(&v);
            assert_eq!(check(), Ok(()));
        }
        assert_eq!(check(), Ok(()));
    }
}
