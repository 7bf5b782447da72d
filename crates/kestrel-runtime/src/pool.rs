//! A persistent worker pool (`std` feature) for [`crate::Session::set_parallel`].
//!
//! Threads are started once and wait between jobs: a job is a set of numbered tasks, and
//! thread `i` of `n` (the caller's is 0) runs tasks `i, i + n, i + 2n, …` — a fixed share,
//! so which thread does which work depends on the job's shape and the thread count
//! only, and per-thread work reproduces run to run. Between jobs a thread spins briefly,
//! then sleeps on a condition variable; the caller, done with its share, does the same
//! until the last worker is done. Each thread owns a scratch buffer sized for the model,
//! allocated when the pool starts, so running a model allocates nothing. Results never
//! depend on the thread count: tasks write disjoint parts of the output with the same
//! arithmetic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::vec::Vec;

use crate::Parallel;

/// The job being run, with its lifetime erased: [`ThreadPool::run`] does not return
/// before every worker has finished with it.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize, &mut [i8]) + Sync));

// SAFETY: the pointee is `Sync` and outlives every use (see `JobPtr`).
unsafe impl Send for JobPtr {}

struct State {
    generation: u64,
    job: Option<JobPtr>,
    tasks: usize,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Signalled (under `state`) when the last worker leaves a job.
    done: Condvar,
    /// `state.generation`, readable without the lock while workers spin.
    generation: AtomicU64,
    /// Workers still inside the current job.
    busy: AtomicUsize,
    /// Threads in all, the caller's included: the stride of each one's tasks.
    threads: usize,
}

/// `threads` threads in all: the caller's and `threads − 1` workers.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    scratch: Mutex<Vec<i8>>,
}

/// How long a worker spins for the next job, and the caller for the last worker, before
/// sleeping: a model's parallel ops follow each other within microseconds, and shares
/// are equal, so most waits end while spinning; longer ones cost a wake-up, not a core.
const SPIN: u32 = 4_000;

impl ThreadPool {
    /// Starts `threads − 1` workers, each with `scratch_bytes` of scratch (a model's
    /// `Model::scratch_bytes`). With `pin`, thread `i` is kept on core `i` (Linux), as
    /// board profiles ask for steady latency.
    pub fn new(threads: usize, scratch_bytes: usize, pin: bool) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                tasks: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            generation: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            threads,
        });
        if pin {
            pin_to_core(0);
        }
        let mut workers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let shared = Arc::clone(&shared);
            workers.push(
                std::thread::Builder::new()
                    .name(std::format!("kestrel-worker-{i}"))
                    .spawn(move || {
                        if pin {
                            pin_to_core(i);
                        }
                        worker(&shared, i, std::vec![0i8; scratch_bytes]);
                    })?,
            );
        }
        Ok(ThreadPool {
            shared,
            workers,
            scratch: Mutex::new(std::vec![0i8; scratch_bytes]),
        })
    }
}

fn worker(shared: &Shared, index: usize, mut scratch: Vec<i8>) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        while spins < SPIN && shared.generation.load(Ordering::Acquire) == seen {
            spins += 1;
            std::hint::spin_loop();
        }
        let (job, tasks) = {
            let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let state = shared
                .wake
                .wait_while(state, |s| !s.stop && s.generation == seen)
                .unwrap_or_else(|e| e.into_inner());
            if state.stop {
                return;
            }
            seen = state.generation;
            (state.job, state.tasks)
        };
        if let Some(job) = job {
            run_share(shared, job, index, tasks, &mut scratch);
        }
        if shared.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one out: wake the caller if it went to sleep. Under the lock, so
            // the wake-up cannot fall between its check and its wait.
            let _state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            shared.done.notify_one();
        }
    }
}

/// Thread `index`'s share of a job: tasks `index, index + threads, …`.
fn run_share(shared: &Shared, job: JobPtr, index: usize, tasks: usize, scratch: &mut [i8]) {
    // SAFETY: `run` keeps the job alive until `busy` drops to zero, after this returns.
    let job = unsafe { &*job.0 };
    for task in (index..tasks).step_by(shared.threads) {
        job(task, scratch);
    }
}

impl Parallel for ThreadPool {
    fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    fn run(&self, tasks: usize, job: &(dyn Fn(usize, &mut [i8]) + Sync)) {
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if self.workers.is_empty() || tasks <= 1 {
            for t in 0..tasks {
                job(t, &mut scratch);
            }
            return;
        }
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased; see `JobPtr`.
        let ptr = JobPtr(unsafe {
            core::mem::transmute::<
                *const (dyn Fn(usize, &mut [i8]) + Sync + '_),
                *const (dyn Fn(usize, &mut [i8]) + Sync + 'static),
            >(job)
        });
        {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            shared.busy.store(self.workers.len(), Ordering::Release);
            state.job = Some(ptr);
            state.tasks = tasks;
            state.generation += 1;
            shared.generation.store(state.generation, Ordering::Release);
        }
        shared.wake.notify_all();
        run_share(shared, ptr, 0, tasks, &mut scratch);
        // Every worker has left the job before it may be dropped.
        let mut spins = 0;
        while spins < SPIN && shared.busy.load(Ordering::Acquire) != 0 {
            spins += 1;
            std::hint::spin_loop();
        }
        let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = shared
            .done
            .wait_while(state, |_| shared.busy.load(Ordering::Acquire) != 0)
            .unwrap_or_else(|e| e.into_inner());
        state.job = None;
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(target_os = "linux")]
fn pin_to_core(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays inside it for
    // core < CPU_SETSIZE; the call only reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if core < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(core, &mut set);
            // Best effort: a container may forbid it; the pool runs either way.
            libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to_core(_core: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_some_thread_with_its_own_scratch() {
        for threads in [1, 2, 4] {
            let pool = ThreadPool::new(threads, 64, false).unwrap();
            assert_eq!(pool.threads(), threads);
            for round in 0..200 {
                let tasks = round % 13;
                let hits: Vec<AtomicU64> = (0..tasks).map(|_| AtomicU64::new(0)).collect();
                pool.run(tasks, &|t, scratch| {
                    assert_eq!(scratch.len(), 64);
                    // Scratch is private to the thread: what it writes, it reads back.
                    scratch.fill(t as i8);
                    std::hint::black_box(&scratch);
                    assert!(scratch.iter().all(|&b| b == t as i8));
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn each_thread_runs_a_fixed_share_and_the_caller_runs_share_zero() {
        let pool = ThreadPool::new(4, 8, false).unwrap();
        let caller = std::thread::current().id();
        for _ in 0..50 {
            let ran: Vec<Mutex<Option<std::thread::ThreadId>>> =
                (0..11).map(|_| Mutex::new(None)).collect();
            pool.run(11, &|t, _| {
                *ran[t].lock().unwrap() = Some(std::thread::current().id());
            });
            let who: Vec<_> = ran.iter().map(|m| m.lock().unwrap().unwrap()).collect();
            for t in 0..11 {
                // Task t runs where task t mod 4 runs, and nowhere else does.
                assert_eq!(who[t], who[t % 4], "task {t}");
                for u in 0..4 {
                    assert_eq!(who[t] == who[u], t % 4 == u, "tasks {t} and {u}");
                }
            }
            assert_eq!(who[0], caller);
        }
    }
}
