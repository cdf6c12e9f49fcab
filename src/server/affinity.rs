//! Public workers kept on CPUs of their own (`server.pin_workers`).
//!
//! A public worker serves its connections from accept to close on its own
//! thread, runtime, socket and upstream pool, so the scheduler gains
//! nothing by moving it from CPU to CPU, and the worker loses its caches
//! each time. Measured with `TLS=1 benches/gateway.sh` on a 2-core machine
//! shared with wrk and the upstream: free workers had a p99 of about 4 ms
//! (as nginx's), pinned ones 0.7–1.2 ms; throughput the same within the
//! machine's noise.
//!
//! Pinning is right only when the CPUs are the process's to use. `auto`
//! (the default) pins when there are two or more workers, exactly as many
//! as CPUs the process may run on, and no CPU quota (a container's `cpu.max`) allows
//! fewer: a pod limited to 2 CPUs of a 32-CPU node keeps its workers free,
//! so the kernel can move them off CPUs that other pods keep busy. nginx's
//! `worker_cpu_affinity auto` is the model; `on` pins whatever the counts,
//! `off` never.
//!
//! Threads a worker's runtime starts for blocking work (password hashing)
//! would inherit its single CPU; they get the whole set back
//! ([`Pinning::unpin_current`]). So would the SQLite store's connection
//! threads, opened by whichever thread asks first: the store opens all of
//! them at start, before any worker is pinned. One that sqlx had to open
//! again later (a connection found broken) would stay on its worker's CPU;
//! it still works, only without the choice of CPU.

use crate::config::PinWorkers;

/// Where each public worker runs, when pinned.
#[derive(Clone, Debug)]
pub struct Pinning {
    #[cfg(target_os = "linux")]
    allowed: rustix::thread::CpuSet,
    /// The CPU of each worker, in worker order.
    cpus: Vec<usize>,
}

impl Pinning {
    /// The CPU for `workers` workers under `setting`, or `None` to leave
    /// them to the scheduler. Reads the calling thread's CPU set: call it
    /// before any worker is pinned.
    pub fn plan(setting: PinWorkers, workers: usize) -> Option<Pinning> {
        #[cfg(target_os = "linux")]
        {
            let allowed = match rustix::thread::sched_getaffinity(None) {
                Ok(allowed) => allowed,
                Err(e) => {
                    if setting != PinWorkers::Off {
                        tracing::warn!(error = %e, "cannot read the CPUs this process may use; workers run free");
                    }
                    return None;
                }
            };
            let cpus: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| allowed.is_set(c)).collect();
            let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
            let pin = match setting {
                PinWorkers::Off => false,
                PinWorkers::On => !cpus.is_empty(),
                PinWorkers::Auto => workers > 1 && workers == cpus.len() && usable == cpus.len(),
            };
            pin.then(|| Pinning { allowed, cpus: (0..workers).map(|w| cpus[w % cpus.len()]).collect() })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (setting, workers);
            None
        }
    }

    /// The CPU worker `worker` is kept on.
    pub fn cpu(&self, worker: usize) -> usize {
        self.cpus[worker % self.cpus.len()]
    }

    /// Keeps the calling thread, worker `worker`, on its CPU.
    pub fn pin_current(&self, worker: usize) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let mut one = rustix::thread::CpuSet::new();
            one.set(self.cpu(worker));
            rustix::thread::sched_setaffinity(None, &one).map_err(Into::into)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = worker;
            Ok(())
        }
    }

    /// Lets the calling thread run on every CPU the process may use.
    pub fn unpin_current(&self) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            rustix::thread::sched_setaffinity(None, &self.allowed).map_err(Into::into)
        }
        #[cfg(not(target_os = "linux"))]
        {
            Ok(())
        }
    }
}
