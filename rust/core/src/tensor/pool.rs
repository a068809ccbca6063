//! The compute threads (`--threads` / `--threads-batch`): one persistent pool per model.
//!
//! A forward pass issues a few hundred small parallel loops per token, a few microseconds each, so
//! hand-off cost decides token speed. The calling thread takes part in every loop; the workers
//! spin on an atomic job word between loops and only park on a condition variable after a quiet
//! spell (so an idle server burns no CPU). Tasks are claimed from a counter that carries the job's
//! epoch, so a worker that wakes late can never run a task of a finished job.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(300);

type TaskFn = dyn Fn(usize) + Sync;

/// The task index that marks a job closed to claims (above every real task count).
const CLOSED: u64 = 0xffff_ffff;

struct Shared {
    /// (epoch << 32) | next task index of the current job, or `CLOSED` while the next job is
    /// being written.
    claim: AtomicU64,
    /// Tasks in the current job; `usize::MAX` marks a broadcast (task i runs on thread i).
    n_tasks: AtomicUsize,
    /// The current job's function: a pointer to the caller's closure, valid until `done` reaches
    /// the task count (the caller waits for that before returning).
    /// Written by the caller before it publishes the epoch (Release on `claim`), read by threads
    /// after they claim a task of that epoch (Acquire), rewritten only after every task of the job
    /// reported through `done`: the atomics order every access.
    job: UnsafeCell<*const TaskFn>,
    done: AtomicUsize,
    /// Threads that take part in the current job: the caller (0) and workers 1..active.
    active: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is the only non-Sync field; its accesses are ordered by the atomics (see there).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
    /// Threads the jobs this thread issues may use (0: the whole pool); see `with_width`.
    static WIDTH: Cell<usize> = const { Cell::new(0) };
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// One job at a time (two generation threads may share a model).
    dispatch: Mutex<()>,
}

/// A fat pointer to the caller's closure with its lifetime erased (see `Shared::job`).
fn erase<'a>(f: &'a (dyn Fn(usize) + Sync + 'a)) -> *const TaskFn {
    // SAFETY: only the lifetime changes; `run` keeps the closure alive while workers may use it.
    unsafe {
        std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static TaskFn>(f) as *const TaskFn
    }
}

impl Shared {
    /// Claim and run tasks of job `epoch` until none are left. Returns how many ran.
    fn work(&self, epoch: u64, me: usize) -> usize {
        let n = self.n_tasks.load(Acquire);
        let mut ran = 0;
        if n == usize::MAX {
            // Broadcast: exactly one task per thread, claimed by bumping the counter once.
            let mut cur = self.claim.load(Acquire);
            loop {
                if cur >> 32 != epoch & 0xffff_ffff || cur & CLOSED == CLOSED {
                    return 0;
                }
                match self
                    .claim
                    .compare_exchange_weak(cur, cur + 1, AcqRel, Acquire)
                {
                    Ok(_) => break,
                    Err(c) => cur = c,
                }
            }
            self.call(me);
            self.done.fetch_add(1, Release);
            return 1;
        }
        let mut cur = self.claim.load(Acquire);
        loop {
            if cur >> 32 != epoch & 0xffff_ffff || (cur & 0xffff_ffff) as usize >= n {
                return ran;
            }
            match self
                .claim
                .compare_exchange_weak(cur, cur + 1, AcqRel, Acquire)
            {
                Ok(_) => {
                    self.call((cur & 0xffff_ffff) as usize);
                    self.done.fetch_add(1, Release);
                    ran += 1;
                    cur = self.claim.load(Acquire);
                }
                Err(c) => cur = c,
            }
        }
    }

    fn call(&self, i: usize) {
        // SAFETY: a task of the current job was claimed and has not completed, so the caller is
        // still inside `run`, the pointer is the one it stored and the closure is alive.
        let f = unsafe { &**self.job.get() };
        if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
            self.panicked.store(true, Release);
        }
    }
}

fn worker(shared: Arc<Shared>, me: usize) {
    IN_POOL.with(|c| c.set(true));
    // The pool starts at epoch 0: a job published before this thread got going is still new to it
    // (a broadcast waits for every thread).
    let mut seen = 0;
    loop {
        // Wait for a new epoch: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let e = shared.claim.load(Acquire) >> 32;
            if e != seen || shared.shutdown.load(Acquire) {
                break e;
            }
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let guard = shared.sleep.lock().unwrap_or_else(|p| p.into_inner());
                shared.sleepers.fetch_add(1, SeqCst);
                let mut guard = guard;
                while shared.claim.load(SeqCst) >> 32 == seen && !shared.shutdown.load(SeqCst) {
                    guard = shared.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                shared.sleepers.fetch_sub(1, SeqCst);
                drop(guard);
                continue;
            }
            std::hint::spin_loop();
        };
        if shared.shutdown.load(Acquire) {
            return;
        }
        seen = epoch;
        if me < shared.active.load(Acquire) {
            shared.work(epoch, me);
        }
    }
}

impl ThreadPool {
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.clamp(1, 1024);
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            n_tasks: AtomicUsize::new(0),
            job: UnsafeCell::new(erase(&|_| {})),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(n_threads),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for me in 1..n_threads {
            let s = shared.clone();
            match std::thread::Builder::new()
                .name(format!("rllama-compute-{me}"))
                .spawn(move || worker(s, me))
            {
                Ok(h) => workers.push(h),
                Err(_) => break, // fewer threads than asked: the work still gets done
            }
        }
        let n_threads = workers.len() + 1;
        Self {
            shared,
            workers,
            n_threads,
            dispatch: Mutex::new(()),
        }
    }

    /// Threads the calling thread's jobs use now: the pool's size, or less inside `with_width`.
    pub fn n_threads(&self) -> usize {
        match WIDTH.with(|w| w.get()) {
            0 => self.n_threads,
            w => w.min(self.n_threads),
        }
    }

    /// Threads the pool holds (the caller's included).
    pub fn size(&self) -> usize {
        self.n_threads
    }

    /// Run `f` with the jobs this thread issues limited to `width` threads (llama.cpp's
    /// `--threads` for token generation, `--threads-batch` for prompts, over one pool).
    pub fn with_width<R>(&self, width: usize, f: impl FnOnce() -> R) -> R {
        struct Restore(usize);
        impl Drop for Restore {
            fn drop(&mut self) {
                WIDTH.with(|w| w.set(self.0));
            }
        }
        let _restore = Restore(WIDTH.with(|w| w.replace(width.max(1))));
        f()
    }

    /// Run `f(i)` for i in 0..n_tasks on the pool's threads (the caller's included).
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let width = self.n_threads();
        if n_tasks <= 1 || width == 1 || IN_POOL.with(|c| c.get()) {
            (0..n_tasks).for_each(f);
            return;
        }
        assert!(n_tasks < u32::MAX as usize, "too many tasks");
        self.job(n_tasks, f, n_tasks, width);
    }

    /// Call `f(i, row)` for every `row_len`-long row `i` of `data`, whole rows split over the
    /// threads when there are at least `min_rows` of them (fewer run on the caller alone).
    pub fn for_rows<T: Send>(
        &self,
        data: &mut [T],
        row_len: usize,
        min_rows: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let row_len = row_len.max(1);
        self.for_row_runs(data, row_len, min_rows, &|first, rows| {
            for (k, r) in rows.chunks_exact_mut(row_len).enumerate() {
                f(first + k, r);
            }
        });
    }

    /// `for_rows` handing each thread its run of consecutive rows at once: `f(first, rows)`,
    /// `rows` whole rows from row `first` on.
    pub fn for_row_runs<T: Send>(
        &self,
        data: &mut [T],
        row_len: usize,
        min_rows: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let row_len = row_len.max(1);
        let n_rows = data.len() / row_len;
        if n_rows < min_rows.max(2) || self.n_threads() == 1 {
            f(0, &mut data[..n_rows * row_len]);
            return;
        }
        let n_tasks = self.n_threads().min(n_rows);
        let per = n_rows.div_ceil(n_tasks);
        let base = SendPtr(data.as_mut_ptr());
        self.run(n_tasks, &|c| {
            let (r0, r1) = ((c * per).min(n_rows), ((c + 1) * per).min(n_rows));
            // SAFETY: rows [r0, r1) belong to task c only, and lie inside `data`, which the
            // caller borrows mutably for the whole call.
            let rows = unsafe {
                std::slice::from_raw_parts_mut(base.get().add(r0 * row_len), (r1 - r0) * row_len)
            };
            f(r0, rows);
        });
    }

    /// Run `f(i)` once on each thread i in 0..n_threads (for measurements that need every thread).
    pub fn broadcast(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n_threads == 1 || IN_POOL.with(|c| c.get()) {
            (0..self.n_threads).for_each(f);
            return;
        }
        self.job(usize::MAX, f, self.n_threads, self.n_threads);
    }

    fn job(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync), expect: usize, active: usize) {
        let _one = self.dispatch.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*self.shared;
        // Close the previous job before its fields change: a worker that saw its epoch late may
        // read the new task count below, and must then find nothing left to claim under the old
        // epoch (otherwise it would run a task of the new job that is also run again, count it
        // twice, and let this call return while a task still runs).
        let prev = s.claim.load(Acquire) >> 32;
        s.claim.store((prev << 32) | CLOSED, SeqCst);
        // SAFETY: no thread reads `job` now: the previous job's tasks all completed (see `Shared::job`).
        unsafe { *s.job.get() = erase(f) };
        s.n_tasks.store(n_tasks, Release);
        s.active.store(active, Release);
        s.done.store(0, Release);
        s.panicked.store(false, Release);
        let epoch = (prev + 1) & 0xffff_ffff;
        s.claim.store(epoch << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        IN_POOL.with(|c| c.set(true));
        s.work(epoch, 0);
        IN_POOL.with(|c| c.set(false));
        let mut spins = 0u32;
        while s.done.load(Acquire) < expect {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if s.panicked.load(Acquire) {
            panic!("a compute task panicked");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A raw pointer handed to pool tasks that each touch a disjoint part of what it points to.
pub struct SendPtr<T>(pub *mut T);
// SAFETY: see the users: every task derives a disjoint range from the pointer.
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for nt in [1, 2, 3, 5] {
            let pool = ThreadPool::new(nt);
            for n in [0, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Relaxed) == 1),
                    "{nt} threads, {n} tasks"
                );
            }
        }
    }

    #[test]
    fn broadcast_reaches_each_thread_and_survives_sleep() {
        let pool = ThreadPool::new(3);
        for round in 0..3 {
            let ids = Mutex::new(Vec::new());
            pool.broadcast(&|i| ids.lock().unwrap().push((i, std::thread::current().id())));
            let mut v = ids.into_inner().unwrap();
            v.sort_by_key(|x| x.0);
            assert_eq!(v.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 2]);
            let mut threads: Vec<_> = v.iter().map(|x| format!("{:?}", x.1)).collect();
            threads.dedup();
            assert_eq!(threads.len(), 3, "round {round}");
            std::thread::sleep(SPIN * 3); // workers park; the next job must wake them
        }
    }

    #[test]
    fn width_limits_the_threads_a_job_uses() {
        let pool = ThreadPool::new(4);
        for width in [1, 2, 3] {
            pool.with_width(width, || {
                assert_eq!(pool.n_threads(), width);
                for _ in 0..20 {
                    let ids = Mutex::new(std::collections::HashSet::new());
                    let n = AtomicUsize::new(0);
                    pool.run(64, &|_| {
                        ids.lock().unwrap().insert(std::thread::current().id());
                        n.fetch_add(1, Relaxed);
                        std::thread::sleep(Duration::from_micros(50));
                    });
                    assert_eq!(n.load(Relaxed), 64);
                    assert!(ids.into_inner().unwrap().len() <= width);
                }
            });
        }
        assert_eq!(pool.n_threads(), 4);
        assert_eq!(pool.size(), 4);
    }

    #[test]
    fn nested_runs_and_panics() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                total.fetch_add(1, Relaxed);
            })
        });
        assert_eq!(total.load(Relaxed), 12);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 5 {
                    panic!("boom")
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(10, &|_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 10);
    }

    #[test]
    fn late_workers_never_run_a_task_twice() {
        // More threads than cores, so workers are often descheduled between seeing a new job and
        // claiming from it; jobs of different sizes (and broadcasts) follow each other closely.
        // Every task must run exactly once, and `run` must not return before all have.
        let pool = ThreadPool::new(6);
        for it in 0..200_000 {
            let n = [2, 37, 5][it % 3];
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "job {it}");
            if it % 1000 == 0 {
                let seen: Vec<AtomicUsize> =
                    (0..pool.size()).map(|_| AtomicUsize::new(0)).collect();
                pool.broadcast(&|i| {
                    seen[i].fetch_add(1, Relaxed);
                });
                assert!(
                    seen.iter().all(|h| h.load(Relaxed) == 1),
                    "broadcast after {it}"
                );
            }
        }
    }
}
