//! A persistent worker pool (`std` feature) for [`crate::Session::set_parallel`].
//!
//! Threads are started once and wait between jobs: a job is a set of numbered tasks that
//! the caller's thread and the workers take in turn from one counter. Each thread owns
//! a scratch buffer sized for the model, allocated when the pool starts, so running a
//! model allocates nothing. Results never depend on which thread ran which task: tasks
//! write disjoint parts of the output with the same arithmetic.

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
    /// `state.generation`, readable without the lock while workers spin.
    generation: AtomicU64,
    next: AtomicUsize,
    /// Workers still inside the current job.
    busy: AtomicUsize,
}

/// `threads` threads in all: the caller's and `threads − 1` workers.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    scratch: Mutex<Vec<i8>>,
}

/// How long a worker spins for the next job before it sleeps: a model's convolutions
/// follow each other within microseconds.
const SPIN: u32 = 20_000;

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
            generation: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
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
                        worker(&shared, std::vec![0i8; scratch_bytes]);
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

fn worker(shared: &Shared, mut scratch: Vec<i8>) {
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
            take_tasks(shared, job, tasks, &mut scratch);
        }
        shared.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take_tasks(shared: &Shared, job: JobPtr, tasks: usize, scratch: &mut [i8]) {
    // SAFETY: `run` keeps the job alive until `busy` drops to zero, after this returns.
    let job = unsafe { &*job.0 };
    loop {
        let task = shared.next.fetch_add(1, Ordering::AcqRel);
        if task >= tasks {
            return;
        }
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
            shared.next.store(0, Ordering::Release);
            shared.busy.store(self.workers.len(), Ordering::Release);
            state.job = Some(ptr);
            state.tasks = tasks;
            state.generation += 1;
            shared.generation.store(state.generation, Ordering::Release);
        }
        shared.wake.notify_all();
        take_tasks(shared, ptr, tasks, &mut scratch);
        // Every worker has left the job before it may be dropped.
        while shared.busy.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        shared.state.lock().unwrap_or_else(|e| e.into_inner()).job = None;
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
}
