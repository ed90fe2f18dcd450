//! The proxy's connections run on worker threads, one single-threaded tokio
//! runtime each (one per CPU by default, `routerd run --proxy-threads`),
//! not on the daemon's shared runtime: a connection's tasks (the client
//! side, the endpoint side, timers) all live on one thread, so a request
//! wakes no other thread. On the shared work-stealing runtime every
//! request woke a parked worker that found nothing to do: 0.58 context
//! switches and about 7 us of CPU per request more (the HTTP bench,
//! `cargo xtask bench`, counts both per proxy).
//!
//! Each listener is one socket per worker on the same address
//! (SO_REUSEPORT: the kernel spreads the connections over them), each
//! accepted on its worker, so a new connection wakes only the thread that
//! serves it (an accept loop on the daemon's runtime handing sockets to
//! workers cost a wake-up across threads per connection: 16.4k against
//! 20k connections per second direct). Each worker has its own pool of
//! idle endpoint connections ([`current`] picks it), whose drivers run on
//! the same worker.
use std::{cell::Cell, future::Future};

use anyhow::{Context, Result};
use tokio::{runtime::Handle, sync::oneshot, task::JoinHandle};

thread_local! {
    /// 1 + this thread's worker index; 0 on every other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Which of `1 + workers` slots the calling thread uses: its worker's
/// (1..), or 0 on any thread that is not a proxy worker (the daemon's
/// runtime, tests).
pub fn current() -> usize {
    WORKER.with(|w| w.get())
}

pub struct Workers {
    handles: Vec<Handle>,
    /// Dropped with the workers: each thread's runtime stops, and the
    /// connections it serves end.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Start `n` worker threads (at least one).
    pub fn start(n: usize) -> Result<Workers> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a tokio runtime for an L7 proxy worker")?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(i + 1));
                    rt.spawn(keep_next_wake_close());
                    let _ = rt.block_on(rx);
                })
                .context("starting an L7 proxy worker thread")?;
        }
        Ok(Workers {
            handles,
            _stop: stop,
        })
    }

    /// How many pools of endpoint connections [`current`] chooses from.
    pub fn slots(&self) -> usize {
        self.handles.len() + 1
    }

    /// How many workers there are (listeners bind one socket each).
    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    /// Run `task` on worker `i`.
    pub fn spawn_on<F>(&self, i: usize, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handles[i % self.handles.len()].spawn(task)
    }
}

/// A timer that is never more than a second away. tokio's timer driver
/// wakes itself (an eventfd write: a system call, and one more turn of
/// the event loop) whenever a timer is set earlier than the wake-up it
/// planned when it last parked; hyper sets the header-read timeout (10 s)
/// for each request, and with nothing else due sooner, a quarter of the
/// requests in the HTTP bench paid for that. With this tick planned, a
/// header timeout never comes first.
async fn keep_next_wake_close() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
