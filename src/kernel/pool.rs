//! A pool of kernels for branches that run at the same time: every slot's kernel is started ahead, in
//! the background and concurrently, so a branch that finds a free slot never waits on a start-up.
//!
//! A returned kernel is restarted (killed, then started fresh, again in the background) before anyone
//! gets it again: a branch expects a kernel with no one else's variables, imports, threads or GPU
//! memory, and only a new process guarantees that (`%reset` frees none of the last three). A kernel
//! found dead when it is handed out is restarted the same way and another one is handed out.
//!
//! Each slot has its own start plan, so one pool can mix kernels on this machine with kernels on a
//! gateway (a restart of a gateway kernel goes through the gateway and keeps its place there).
//!
//! On an Enterprise Gateway with several remote hosts the pool may be given them ([`Pool::set_hosts`]):
//! each start of a gateway slot is then pinned to one (`KERNEL_REMOTE_HOST`), the next one in turn
//! that is not avoided. Which host to avoid, and for how long, is the caller's decision (a Lua policy,
//! `stdlib/hosts.lua`): the pool only records every failed start ([`Pool::failures`]) with the host it
//! was pinned to, and keeps away from a host while [`Pool::avoid`] says so.
//!
//! Slot i may be pinned to one GPU: its kernel gets `CUDA_VISIBLE_DEVICES=<gpu>`, so inside it that GPU
//! is `cuda:0`. The pool and its background starts live on the thread of the Lua VM (a `LocalSet`);
//! dropping the pool kills its idle and starting kernels at once, and a kernel handed out dies with its
//! [`Lease`] if the pool is gone by then. Nothing here may leave a kernel running after the pool and
//! its leases are gone.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::Notify;

use super::{Kernel, KernelError, KernelSpec, StartOptions};

/// Errors of the pool a caller may branch on (besides [`KernelError::Interrupted`]).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No slot has a kernel or can get one: every start failed. The failed slots are started again.
    #[error("no kernel of the pool could start: {0}")]
    Start(String, &'static str),
    #[error("the pool is shut down")]
    Closed,
}

enum Slot {
    /// Starting or restarting in the background.
    Starting(tokio::task::JoinHandle<()>),
    Ready(Box<Kernel>),
    Leased,
    /// Why it failed, and the kind of the failure ([`super::start_failure_kind`]).
    Failed(String, &'static str),
    Closed,
}

/// How one slot starts its kernel: here from `spec`, or on `opts.gateway`.
#[derive(Clone)]
pub struct Plan {
    pub spec: Option<KernelSpec>,
    pub opts: StartOptions,
    pub gpu: Option<u32>,
}

struct Inner {
    plans: Vec<Plan>,
    slots: RefCell<Vec<Slot>>,
    changed: Notify,
    closed: Cell<bool>,
    /// The gateway's hosts the gateway slots are spread over (empty: the gateway chooses).
    hosts: RefCell<Vec<String>>,
    /// Hosts avoided until then.
    avoid: RefCell<HashMap<String, Instant>>,
    /// The next host to try, an index into `hosts`.
    next_host: Cell<usize>,
    /// Failed starts not yet taken by [`Pool::failures`].
    failures: RefCell<Vec<StartFailure>>,
}

/// A failed start of a slot's kernel.
#[derive(Clone, Debug)]
pub struct StartFailure {
    pub slot: usize,
    /// The host it was pinned to ([`Pool::set_hosts`]), else the one the gateway's message names, if any.
    pub host: Option<String>,
    pub kind: &'static str,
    pub message: String,
}

/// A handle to a pool; clones share it.
#[derive(Clone)]
pub struct Pool(Rc<Inner>);

/// A kernel handed out by [`Pool::acquire`]; its ticket gives it back ([`Pool::release`]).
pub struct Lease {
    pub kernel: Kernel,
    pub ticket: Ticket,
}

/// Which slot of which pool a handed-out kernel belongs to.
pub struct Ticket {
    pub slot: usize,
    pub gpu: Option<u32>,
    pool: Weak<Inner>,
}

impl Ticket {
    /// Whether this ticket is of `pool`.
    pub fn belongs_to(&self, pool: &Pool) -> bool {
        self.pool.ptr_eq(&Rc::downgrade(&pool.0))
    }

    /// Give `kernel` back to its pool, if the pool still exists; otherwise the kernel is dropped (killed).
    pub fn give_back(self, kernel: Kernel) {
        if let Some(inner) = self.pool.upgrade() {
            Pool(inner).release(self, kernel);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for s in self.slots.get_mut().drain(..) {
            if let Slot::Starting(h) = s {
                // the start future, and the kernel process it may hold, is dropped (killed)
                h.abort();
            }
        }
    }
}

impl Pool {
    /// A pool of one kernel per plan. Returns at once: the kernels start in the background. Must be
    /// called on a `LocalSet`.
    pub fn new(plans: Vec<Plan>) -> Pool {
        Pool::new_with_hosts(plans, Vec::new())
    }

    /// [`Pool::new`] with the gateway slots spread over `hosts` from their first start.
    pub fn new_with_hosts(plans: Vec<Plan>, hosts: Vec<String>) -> Pool {
        let size = plans.len();
        let inner = Rc::new(Inner {
            plans,
            slots: RefCell::new((0..size).map(|_| Slot::Failed(String::new(), "start")).collect()),
            changed: Notify::new(),
            closed: Cell::new(false),
            hosts: RefCell::new(hosts),
            avoid: RefCell::new(HashMap::new()),
            next_host: Cell::new(0),
            failures: RefCell::new(Vec::new()),
        });
        let pool = Pool(inner);
        for i in 0..size {
            pool.start(i, None);
        }
        pool
    }

    pub fn size(&self) -> usize {
        self.0.plans.len()
    }

    /// The GPU slot `i` is pinned to.
    pub fn gpu(&self, slot: usize) -> Option<u32> {
        self.0.plans.get(slot).and_then(|p| p.gpu)
    }

    /// Spread the gateway slots' next starts over `hosts` (in turn, skipping avoided ones).
    pub fn set_hosts(&self, hosts: Vec<String>) {
        *self.0.hosts.borrow_mut() = hosts;
    }

    /// The hosts, each with how long it is still avoided.
    pub fn hosts(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let avoid = self.0.avoid.borrow();
        let left = |h: &String| avoid.get(h).map(|u| u.saturating_duration_since(now)).unwrap_or_default();
        self.0.hosts.borrow().iter().map(|h| (h.clone(), left(h))).collect()
    }

    /// Keep new starts away from `host` for `for_` (zero: no longer); slots whose start failed are
    /// started again at once, on the hosts left.
    pub fn avoid(&self, host: &str, for_: Duration) {
        if for_.is_zero() {
            self.0.avoid.borrow_mut().remove(host);
        } else {
            self.0.avoid.borrow_mut().insert(host.to_string(), Instant::now() + for_);
        }
        let failed: Vec<usize> = self
            .0
            .slots
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Failed(m, _) if !m.is_empty()))
            .map(|(i, _)| i)
            .collect();
        if !self.0.closed.get() {
            for i in failed {
                self.start(i, None);
            }
        }
    }

    /// The failed starts since the last call.
    pub fn failures(&self) -> Vec<StartFailure> {
        std::mem::take(&mut *self.0.failures.borrow_mut())
    }

    /// The host the next gateway start goes to: the next in turn not avoided; when every one is, the
    /// one free soonest. None without hosts.
    fn next_host(&self) -> Option<String> {
        let hosts = self.0.hosts.borrow();
        if hosts.is_empty() {
            return None;
        }
        let now = Instant::now();
        let avoid = self.0.avoid.borrow();
        let n = hosts.len();
        let start = self.0.next_host.get();
        let free = (0..n).map(|k| (start + k) % n).find(|&i| avoid.get(&hosts[i]).is_none_or(|u| *u <= now));
        let i =
            free.unwrap_or_else(|| (0..n).min_by_key(|&i| avoid.get(&hosts[i]).copied().unwrap_or(now)).unwrap_or(0));
        self.0.next_host.set(i + 1);
        Some(hosts[i].clone())
    }

    /// How many slots start their kernel on a gateway.
    pub fn remote(&self) -> usize {
        self.0.plans.iter().filter(|p| p.opts.gateway.is_some()).count()
    }

    /// Start slot `i`'s kernel in the background: a new one, or `prev` restarted.
    fn start(&self, i: usize, prev: Option<Kernel>) {
        if crate::signals::interrupted() {
            // After Ctrl-C nothing new starts; a kernel given back is dropped here, which kills it.
            self.0.slots.borrow_mut()[i] = Slot::Failed(KernelError::Interrupted.to_string(), "interrupted");
            return;
        }
        let weak = Rc::downgrade(&self.0);
        let Plan { spec, mut opts, gpu } = self.0.plans[i].clone();
        if let Some(g) = gpu {
            opts.env.retain(|(k, _)| k != "CUDA_VISIBLE_DEVICES");
            opts.env.push(("CUDA_VISIBLE_DEVICES".into(), g.to_string()));
        }
        let host = if opts.gateway.is_some() { self.next_host() } else { None };
        if let Some(h) = &host {
            opts.env.retain(|(k, _)| k != "KERNEL_REMOTE_HOST");
            opts.env.push(("KERNEL_REMOTE_HOST".into(), h.clone()));
        }
        let task = tokio::task::spawn_local(async move {
            let r = match prev {
                Some(mut k) => {
                    // fresh for the next taker: not in the last one's folder or environment
                    k.leave();
                    if host.is_some() {
                        k.pin_host(host.as_deref());
                    }
                    k.restart().await.map(|()| k)
                }
                None => Kernel::launch(spec, opts).await,
            };
            // The pool is gone: the kernel is dropped here, which kills it.
            let Some(inner) = weak.upgrade() else { return };
            let mut slots = inner.slots.borrow_mut();
            if matches!(slots[i], Slot::Closed) {
                return;
            }
            slots[i] = match r {
                Ok(k) => Slot::Ready(Box::new(k)),
                Err(e) => {
                    tracing::warn!("kernel pool: slot {} could not start: {e:#}", i + 1);
                    let (message, kind) = (format!("{e:#}"), super::start_failure_kind(&e));
                    let mut f = inner.failures.borrow_mut();
                    // unpinned: the host EG's message names, if it does
                    let host = host.or_else(|| super::gateway::host_named_in(&message));
                    f.push(StartFailure { slot: i, host, kind, message: message.clone() });
                    // nobody reads them: keep the latest
                    if f.len() > 100 {
                        f.remove(0);
                    }
                    drop(f);
                    Slot::Failed(message, kind)
                }
            };
            drop(slots);
            inner.changed.notify_waiters();
        });
        self.0.slots.borrow_mut()[i] = Slot::Starting(task);
    }

    /// A kernel of the pool, waiting (asynchronously) while every slot is busy or starting. A kernel
    /// found dead is restarted in the background and another one is taken. Fails with
    /// [`PoolError::Start`] when no slot has a kernel and none is starting or handed out (every start
    /// failed), with [`KernelError::Interrupted`] on Ctrl-C.
    pub async fn acquire(&self) -> Result<Lease> {
        loop {
            // Registered before looking, so a change between the look and the wait is not missed.
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.0.closed.get() {
                bail!(PoolError::Closed);
            }
            if crate::signals::stopping() {
                bail!(KernelError::Interrupted);
            }
            if let Some(lease) = self.take_ready() {
                return Ok(lease);
            }
            let failed: Vec<(usize, String, &'static str)> = {
                let slots = self.0.slots.borrow();
                let waitable = slots.iter().any(|s| matches!(s, Slot::Starting(_) | Slot::Leased));
                if waitable {
                    Vec::new()
                } else {
                    let f = slots.iter().enumerate();
                    f.filter_map(|(i, s)| if let Slot::Failed(e, k) = s { Some((i, e.clone(), *k)) } else { None })
                        .collect()
                }
            };
            if let Some((_, first, kind)) = failed.first() {
                // Try again for the next caller: the cause may be gone by then (a full disk, a busy GPU,
                // a gateway restarting).
                let (first, kind) = (first.clone(), *kind);
                for (i, _, _) in failed {
                    self.start(i, None);
                }
                bail!(PoolError::Start(first, kind));
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = crate::signals::token().cancelled() => bail!(KernelError::Interrupted),
            }
        }
    }

    /// Take a ready, live kernel; restart the dead ones found on the way.
    fn take_ready(&self) -> Option<Lease> {
        let mut dead = Vec::new();
        let mut found = None;
        {
            let mut slots = self.0.slots.borrow_mut();
            for (i, s) in slots.iter_mut().enumerate() {
                if !matches!(s, Slot::Ready(_)) {
                    continue;
                }
                let Slot::Ready(k) = std::mem::replace(s, Slot::Leased) else { unreachable!() };
                if k.alive() {
                    let ticket = Ticket { slot: i, gpu: self.0.plans[i].gpu, pool: Rc::downgrade(&self.0) };
                    found = Some(Lease { kernel: *k, ticket });
                    break;
                }
                tracing::warn!("kernel pool: slot {}'s idle kernel had died; starting a new one", i + 1);
                dead.push((i, *k));
            }
        }
        for (i, k) in dead {
            self.start(i, Some(k));
        }
        found
    }

    /// Give a kernel back: it is restarted in the background and its slot is free again once it is up
    /// (after [`Pool::shutdown`], it is shut down instead).
    pub fn release(&self, ticket: Ticket, mut kernel: Kernel) {
        let slot = ticket.slot;
        if self.0.closed.get() || !ticket.belongs_to(self) {
            tokio::task::spawn_local(async move { kernel.shutdown().await });
            return;
        }
        self.start(slot, Some(kernel));
    }

    /// Shut down every kernel the pool holds (idle ones politely, starting ones killed); kernels handed
    /// out are shut down when they are given back. Waiting callers of `acquire` fail.
    pub async fn shutdown(&self) {
        self.0.closed.set(true);
        let mut idle = Vec::new();
        let mut remote_starts = Vec::new();
        for (i, s) in self.0.slots.borrow_mut().iter_mut().enumerate() {
            match std::mem::replace(s, Slot::Closed) {
                // A local start is killed at once. A gateway start (or restart) is let finish, bounded:
                // cut short, the gateway may be left with a kernel that is being created or restarted,
                // which no delete reaches. Finished, it sees the pool closed and deletes its kernel.
                Slot::Starting(h) if self.0.plans[i].opts.gateway.is_some() => remote_starts.push(h),
                Slot::Starting(h) => h.abort(),
                Slot::Ready(k) => idle.push(*k),
                Slot::Leased => *s = Slot::Leased,
                Slot::Failed(..) | Slot::Closed => {}
            }
        }
        self.0.changed.notify_waiters();
        futures_util::future::join_all(idle.iter_mut().map(|k| k.shutdown())).await;
        let all = futures_util::future::join_all(remote_starts);
        if tokio::time::timeout(std::time::Duration::from_secs(60), all).await.is_err() {
            tracing::warn!("kernel pool: a gateway kernel was still starting after 60 s; left to the gateway's culler");
        }
    }

    /// How many slots have an idle, live kernel ready to hand out.
    pub fn ready(&self) -> usize {
        self.0.slots.borrow().iter().filter(|s| matches!(s, Slot::Ready(k) if k.alive())).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_starts_go_to_the_hosts_in_turn_skipping_avoided_ones_until_their_time_is_up() {
        let pool = Pool::new_with_hosts(Vec::new(), vec!["a".into(), "b".into(), "c".into()]);
        let next = || pool.next_host().unwrap();
        assert_eq!([next(), next(), next(), next()], ["a", "b", "c", "a"]);
        pool.avoid("b", Duration::from_secs(60));
        assert_eq!([next(), next(), next()], ["c", "a", "c"]);
        let left: Vec<(String, bool)> =
            pool.hosts().into_iter().map(|(h, d)| (h, d > Duration::from_secs(50))).collect();
        assert_eq!(left, [("a".into(), false), ("b".into(), true), ("c".into(), false)]);
        // every host avoided: the one free soonest
        pool.avoid("a", Duration::from_secs(30));
        pool.avoid("c", Duration::from_secs(90));
        assert_eq!(next(), "a");
        // zero: no longer avoided
        pool.avoid("b", Duration::ZERO);
        assert_eq!(next(), "b");
        assert!(Pool::new(Vec::new()).next_host().is_none(), "without hosts the gateway chooses");
    }
}
