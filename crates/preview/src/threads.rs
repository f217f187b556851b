//! Work spread over a few scoped threads, results in input order: how
//! preview parses, hardens and renders large inputs on every core.

/// Upper bound on threads, whatever the machine.
const MAX_THREADS: usize = 8;

/// How many threads to spread work over.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS)
}

/// Runs `work` over `items` on scoped threads (inline for a single item),
/// results in the order of `items`.
pub(crate) fn parallel<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    parallel_owned(items.iter().collect(), work)
}

/// [`parallel`] for items that move into their thread.
pub(crate) fn parallel_owned<T: Send, R: Send>(
    items: Vec<T>,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    if items.len() < 2 {
        return items.into_iter().map(&work).collect();
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || work(item)))
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}
