//! A small thread pool for the quantized matmuls and the cached attention
//! of decoding, whose workers spin between jobs instead of sleeping.
//!
//! A decoding step runs a hundred or more matmuls of well under a
//! millisecond each. Handing each to a pool whose threads sleep on a futex
//! (rayon's) costs a wake-up per matmul, and on a busy or virtualised
//! machine a wake-up can take longer than the matmul. Here the calling
//! thread works too, and the other workers poll for the next job for a few
//! milliseconds after each one before they go to sleep, as ggml's do.
//!
//! A spinning pool has one failure: when another process takes a worker's
//! core, the worker is descheduled holding a chunk, and the caller waits out
//! the other process's time slice at the end of nearly every job. Sampling
//! kept 21% of its speed beside a busy loop on one of 2 cores. So a caller
//! that waits for a late worker longer than it worked itself runs the jobs
//! of the next few milliseconds alone ([`Solo`]), then tries the workers
//! again: it keeps the core that is free.

use std::{
    cell::UnsafeCell,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, OnceLock, TryLockError,
    },
    time::{Duration, Instant},
};

/// How long an idle worker polls before it sleeps.
const SPIN: Duration = Duration::from_millis(5);
/// A worker is late when the caller waits this long for it, and longer than
/// it worked on the job itself: a chunk takes microseconds to a few
/// milliseconds, and a descheduled thread waits out a time slice.
const LATE: Duration = Duration::from_millis(1);
/// How long the caller then runs jobs alone: SOLO_MIN after a late worker,
/// doubled up to SOLO_MAX while workers keep being late soon after.
const SOLO_MIN: Duration = Duration::from_millis(5);
const SOLO_MAX: Duration = Duration::from_millis(50);

/// When the caller runs jobs alone. A process that holds a worker's core
/// for good (a busy loop at the same priority) makes the worker late again
/// soon after every retry, so the solo stretches grow to SOLO_MAX and the
/// retries cost little. A worker late once (woken after a serial stretch of
/// the caller's, or preempted for one slice by a nice-19 job) costs only
/// SOLO_MIN of one core: a fixed SOLO_MAX made a WRPO step 4-8% slower alone
/// and kept 86-93% of it beside a nice-19 loop (now 101-106%), on Zen 4.
struct Solo {
    /// When a worker was last late; the stretch alone runs `length` from then.
    last_late: Option<Instant>,
    length: Duration,
}

impl Solo {
    const NONE: Solo = Solo { last_late: None, length: SOLO_MIN };

    fn alone_at(&self, now: Instant) -> bool {
        self.last_late.is_some_and(|t| now < t + self.length)
    }

    /// A worker was late at `now`: run alone for a while, longer if the
    /// last time was within this stretch and four more.
    fn late(&mut self, now: Instant) {
        let again = self.last_late.is_some_and(|t| now.duration_since(t) < 5 * self.length);
        self.length = if again { (2 * self.length).min(SOLO_MAX) } else { SOLO_MIN };
        self.last_late = Some(now);
    }
}

type Task = dyn Fn(usize) + Sync;

/// The job word: the job's generation above these bits, then whether the
/// job is closed to workers, then how many workers joined it.
const GENERATION: u32 = 32;
const CLOSED: u64 = 1 << 31;
const JOINED: u64 = CLOSED - 1;

struct Shared {
    /// Generation, closed and joined (above), as one word so that a worker
    /// joins only the job it saw, and only before the caller closes it.
    /// Workers watch it for a new generation.
    job: AtomicU64,
    /// The job's task, valid until every worker that joined has left it.
    task: UnsafeCell<*const Task>,
    chunks: AtomicUsize,
    next: AtomicUsize,
    /// Workers that joined the current job and have left it.
    left: AtomicUsize,
    panicked: AtomicBool,
    /// Workers asleep or about to be: only then does a job need a wake-up call.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `task` is written only by the thread that holds `Pool::submit`,
// before it publishes the job through `job` (SeqCst), and read by workers
// only after they joined that job (AcqRel); the submitter closes the job and
// waits until every worker that joined has left before the task goes out of
// scope.
unsafe impl Sync for Shared {}

/// A pointer through which pool tasks write disjoint elements of one buffer.
pub(crate) struct SharedMut<T>(pub *mut T);
// SAFETY: users write disjoint elements only, to a buffer that outlives the job.
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// # Safety
    /// `i` is inside the buffer.
    pub(crate) unsafe fn add(&self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

/// `f` on every item of `items` across the compute threads, each item once:
/// for the other crates' work beside the model's (the optimizer's updates,
/// the sampler's draws), on the same threads.
pub fn for_each_mut<T: Send>(items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
    Pool::global().for_each_mut(items, f);
}

pub struct Pool {
    shared: &'static Shared,
    workers: usize,
    /// One job at a time; a second caller runs its chunks itself. Holds
    /// when jobs run on the caller alone (a worker was late).
    submit: Mutex<Solo>,
}

impl Pool {
    /// The process-wide pool, sized like rayon's (RAYON_NUM_THREADS, or
    /// every core).
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(rayon::current_num_threads()))
    }

    fn new(threads: usize) -> Pool {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: AtomicU64::new(0),
            task: UnsafeCell::new(std::ptr::null::<fn(usize)>() as *const Task),
            chunks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            left: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let workers = threads.max(1) - 1;
        for i in 0..workers {
            std::thread::Builder::new().name(format!("wrpo-pool-{i}")).spawn(move || worker(shared)).expect("cannot start a pool thread");
        }
        Pool { shared, workers, submit: Mutex::new(Solo::NONE) }
    }

    /// Threads that run a job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// `f` on every item of `items` across the pool, each item once.
    pub fn for_each_mut<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
        let items_ptr = SharedMut(items.as_mut_ptr());
        // SAFETY: task i is the only one to touch item i, which outlives the job.
        self.run(items.len(), &|i| f(unsafe { &mut *items_ptr.add(i) }));
    }

    /// Run `task(0..chunks)` across the pool; returns when all are done.
    pub fn run(&self, chunks: usize, task: &(dyn Fn(usize) + Sync)) {
        let mut guard = match self.submit.try_lock() {
            Ok(g) => g,
            // A chunk panicked in an earlier job, which still ended cleanly.
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return (0..chunks).for_each(task),
        };
        let started = Instant::now();
        if self.workers == 0 || chunks < 2 || guard.alone_at(started) {
            return (0..chunks).for_each(task);
        }
        let s = self.shared;
        let borrowed: *const (dyn Fn(usize) + Sync + '_) = task;
        // SAFETY: no worker reads `task` now (every worker that joined the
        // last job had left it when it returned, and workers read it only
        // after joining a new one), and this job does not return before the
        // workers that join it are done with it.
        unsafe { *s.task.get() = std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Task>(borrowed) };
        s.chunks.store(chunks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.left.store(0, Ordering::Relaxed);
        let generation = (s.job.load(Ordering::Relaxed) >> GENERATION).wrapping_add(1);
        // SeqCst with the sleepers count: a worker either counts itself
        // before this job is published, and is woken, or sees the job.
        s.job.store(generation << GENERATION, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            // Under the lock, so that no worker is between its check and its wait.
            drop(s.sleep.lock().unwrap_or_else(|e| e.into_inner()));
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| work(s, task)));
        let done = Instant::now();
        // Workers that have not joined by now (asleep, or descheduled before
        // they saw the job) are not waited for: no chunk is left for them.
        let joined = (s.job.fetch_or(CLOSED, Ordering::AcqRel) & JOINED) as usize;
        let mut spins = 0u32;
        while s.left.load(Ordering::Acquire) < joined {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                // A worker sharing this core gets it.
                std::thread::yield_now();
            }
        }
        let waited = done.elapsed();
        if waited > LATE && waited > done - started {
            guard.late(Instant::now());
        }
        // Cleared whichever panic is raised, so that it does not poison the next job.
        let theirs = s.panicked.swap(false, Ordering::Relaxed);
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if theirs {
            panic!("a task panicked on a pool thread");
        }
    }
}

/// Take chunks until none are left.
fn work(s: &Shared, task: &(dyn Fn(usize) + Sync)) {
    loop {
        let chunk = s.next.fetch_add(1, Ordering::Relaxed);
        if chunk >= s.chunks.load(Ordering::Relaxed) {
            return;
        }
        task(chunk);
    }
}

/// Joins the job of generation `generation` unless it is closed or gone.
fn join(s: &Shared, generation: u64) -> bool {
    let mut word = s.job.load(Ordering::Acquire);
    while word >> GENERATION == generation && word & CLOSED == 0 {
        match s.job.compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => word = now,
        }
    }
    false
}

fn worker(s: &'static Shared) {
    let mut seen = 0;
    let generation = |s: &Shared, order| s.job.load(order) >> GENERATION;
    loop {
        // Poll for the next job, then sleep until one comes.
        let idle = Instant::now();
        let mut spins = 0u32;
        while generation(s, Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                continue;
            }
            // Let other threads of the process (candle's) have this core.
            std::thread::yield_now();
            if idle.elapsed() > SPIN {
                let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let guard = s.wake.wait_while(guard, |_| generation(s, Ordering::SeqCst) == seen);
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(guard);
            }
        }
        seen = generation(s, Ordering::Acquire);
        if !join(s, seen) {
            continue;
        }
        // SAFETY: the submitter wrote the task before publishing this
        // generation, and keeps it alive until every worker that joined
        // before it closed the job has left.
        let task = unsafe { &**s.task.get() };
        if catch_unwind(AssertUnwindSafe(|| work(s, task))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.left.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once_even_from_several_callers() {
        let pool = Pool::new(3);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for chunks in [0, 1, 2, 7, 100] {
                        let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                        pool.run(chunks, &|c| {
                            hits[c].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn after_a_late_worker_the_caller_runs_jobs_alone_for_a_while() {
        let pool = Pool::new(2);
        let caller = std::thread::current().id();
        let on_workers = AtomicUsize::new(0);
        // Chunks that a worker takes wait as a descheduled worker would.
        let job = |c: usize| {
            if std::thread::current().id() != caller {
                on_workers.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(4 * LATE);
            } else if c == 0 {
                // Time for a sleeping worker to wake and take a chunk.
                std::thread::sleep(Duration::from_micros(300));
            }
        };
        // Until a worker has taken a chunk (it may be asleep, or too slow to get one).
        let late = (0..100).any(|_| {
            pool.run(8, &job);
            on_workers.swap(0, Ordering::Relaxed) > 0
        });
        assert!(late, "no worker ever took a chunk");
        let solo_since = Instant::now();
        pool.run(64, &job);
        assert_eq!(on_workers.load(Ordering::Relaxed), 0, "the job after a late worker ran on the workers");
        // Then the workers get jobs again.
        std::thread::sleep(SOLO_MAX.saturating_sub(solo_since.elapsed()));
        let shared = (0..100).any(|_| {
            pool.run(8, &|c| {
                if c == 0 {
                    std::thread::sleep(Duration::from_micros(300));
                }
                if std::thread::current().id() != caller {
                    on_workers.fetch_add(1, Ordering::Relaxed);
                }
            });
            on_workers.load(Ordering::Relaxed) > 0
        });
        assert!(shared, "the workers never got a job back");
    }

    #[test]
    fn solo_stretches_grow_while_workers_stay_late_and_restart_short() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut solo = Solo::NONE;
        assert!(!solo.alone_at(t0));
        solo.late(t0);
        assert!(solo.alone_at(ms(4)) && !solo.alone_at(ms(5)));
        // Late again at each retry: 10, 20, 40, then at most 50 ms.
        let mut at = 5;
        for length in [10, 20, 40, 50, 50] {
            at += 1;
            solo.late(ms(at));
            assert_eq!(solo.length, Duration::from_millis(length));
            assert!(solo.alone_at(ms(at + length - 1)) && !solo.alone_at(ms(at + length)));
            at += length;
        }
        // Late once after a long calm: short again.
        solo.late(ms(at + 1000));
        assert_eq!(solo.length, SOLO_MIN);
    }

    #[test]
    fn a_panicking_chunk_panics_the_caller() {
        let pool = Pool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| pool.run(8, &|c| assert_ne!(c, 5))));
        assert!(result.is_err());
        // The pool still works.
        let sum = AtomicUsize::new(0);
        pool.run(4, &|c| {
            sum.fetch_add(c, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_job_whose_chunks_all_panic_does_not_poison_the_next() {
        let pool = Pool::new(2);
        // Slow chunks, so that the worker takes some while the caller panics on its own.
        let failing = |_| {
            std::thread::sleep(Duration::from_millis(10));
            panic!("chunk failed");
        };
        assert!(catch_unwind(AssertUnwindSafe(|| pool.run(8, &failing))).is_err());
        let sum = AtomicUsize::new(0);
        pool.run(4, &|c| {
            sum.fetch_add(c, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    }
}
