//! Work spread over the machine's CPUs, for start-up's pure, per-object
//! steps (reading and parsing config files, compiling virtual hosts): the
//! daemon's time to ready at 10,000 services is mostly these.

/// `f` over every item, on as many threads as the machine has (results in
/// the items' order). Threads take the next few items as they finish the
/// last: documents differ in cost (an EndpointSlice of a hundred endpoints
/// against a one-route table), so fixed halves left one thread idle for a
/// third of a start-up.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const BATCH: usize = 16;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len() / 64 + 1);
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done: Vec<(usize, Vec<R>)> = Vec::new();
        loop {
            let start = next.fetch_add(BATCH, std::sync::atomic::Ordering::Relaxed);
            if start >= items.len() {
                return done;
            }
            let end = (start + BATCH).min(items.len());
            done.push((start, items[start..end].iter().map(&f).collect()));
        }
    };
    let mut batches: Vec<(usize, Vec<R>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in handles {
            all.extend(h.join().expect("a worker thread panicked"));
        }
        all
    });
    batches.sort_unstable_by_key(|(start, _)| *start);
    batches.into_iter().flat_map(|(_, r)| r).collect()
}
