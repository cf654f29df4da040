//! Collectives between the ranks of one job: the [`Communicator`] trait and its in-process
//! implementation, [`InProcessGroup`], for ranks that are threads of one process (on one
//! device, on the CPU, or on several GPUs with device-to-device copies).
//!
//! A rank that fails aborts its groups ([`Communicator::abort`]): every rank waiting in — or
//! later entering — a collective of an aborted group gets [`PipelineError::Collective`] instead
//! of waiting forever for a peer that will never come.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tch::{Device, Tensor};

use crate::error::{PipelineError, Result};

/// The collectives a parallel forward needs, over one group of ranks. Every rank of the group
/// must call the same collectives in the same order (as NCCL requires).
///
/// Received tensors may share storage with the sender's (ranks on one device): read them, never
/// modify them in place.
pub trait Communicator: Send {
    /// This rank's index in the group, `0..size()`.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn size(&self) -> usize;

    /// `send[j]` goes to rank `j`; returns what every rank `j` sent to this one, in rank order,
    /// on this rank's device.
    fn all_to_all(&self, send: Vec<Tensor>) -> Result<Vec<Tensor>>;

    /// Every rank's `tensor`, in rank order, on this rank's device.
    fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        let send = (0..self.size()).map(|_| tensor.shallow_clone()).collect();
        self.all_to_all(send)
    }

    /// Marks the group failed: every collective of every rank of the group fails from now on.
    fn abort(&self, reason: &str);
}

/// What the ranks of one in-process group share: one mailbox per (sender, receiver) pair and an
/// abortable two-phase barrier.
struct Exchange {
    size: usize,
    state: Mutex<ExchangeState>,
    changed: Condvar,
}

struct ExchangeState {
    /// `mailbox[from][to]`.
    mailbox: Vec<Vec<Option<Tensor>>>,
    /// Ranks that reached the barrier of the current phase.
    arrived: usize,
    /// Counts barrier phases; a waiter leaves when it moves on.
    phase: u64,
    /// Why the group was aborted, once it was.
    aborted: Option<String>,
}

impl Exchange {
    fn lock(&self) -> MutexGuard<'_, ExchangeState> {
        // A rank that panicked while holding the lock leaves consistent state behind (every
        // update is a single assignment), so the poison is ignored; the panic aborts the group.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until all `size` ranks arrived, or the group is aborted.
    fn barrier<'a>(
        &'a self,
        mut state: MutexGuard<'a, ExchangeState>,
    ) -> Result<MutexGuard<'a, ExchangeState>> {
        check_aborted(&state)?;
        state.arrived += 1;
        if state.arrived == self.size {
            state.arrived = 0;
            state.phase += 1;
            self.changed.notify_all();
            return Ok(state);
        }
        let phase = state.phase;
        while state.phase == phase && state.aborted.is_none() {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        check_aborted(&state)?;
        Ok(state)
    }
}

/// How the error of a collective in an aborted group starts: the failure is another rank's.
pub const PEER_FAILED: &str = "a peer rank failed";

fn check_aborted(state: &ExchangeState) -> Result<()> {
    match &state.aborted {
        Some(reason) => Err(PipelineError::Collective {
            message: format!("{PEER_FAILED}: {reason}"),
        }),
        None => Ok(()),
    }
}

/// One rank's handle on an in-process group. Made by [`InProcessGroup::new`], one per rank;
/// each handle moves to its rank's thread.
pub struct InProcessGroup {
    exchange: Arc<Exchange>,
    rank: usize,
    device: Device,
}

impl InProcessGroup {
    /// Handles for a group whose rank `i` computes on `devices[i]`.
    pub fn new(devices: &[Device]) -> Vec<Self> {
        let size = devices.len();
        let exchange = Arc::new(Exchange {
            size,
            state: Mutex::new(ExchangeState {
                mailbox: (0..size)
                    .map(|_| (0..size).map(|_| None).collect())
                    .collect(),
                arrived: 0,
                phase: 0,
                aborted: None,
            }),
            changed: Condvar::new(),
        });
        devices
            .iter()
            .enumerate()
            .map(|(rank, &device)| Self {
                exchange: Arc::clone(&exchange),
                rank,
                device,
            })
            .collect()
    }
}

impl InProcessGroup {
    /// Waits until every rank of the group got here, or fails once the group is aborted.
    pub fn barrier(&self) -> Result<()> {
        let state = self.exchange.lock();
        drop(self.exchange.barrier(state)?);
        Ok(())
    }
}

impl Communicator for InProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.exchange.size
    }

    fn all_to_all(&self, send: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let size = self.exchange.size;
        if send.len() != size {
            return Err(PipelineError::Collective {
                message: format!(
                    "all_to_all got {} tensors for a group of {size}",
                    send.len()
                ),
            });
        }
        if size == 1 {
            return Ok(send);
        }
        // 1. post: every rank fills its row of the mailbox, then all wait for each other
        let mut state = self.exchange.lock();
        for (to, tensor) in send.into_iter().enumerate() {
            state.mailbox[self.rank][to] = Some(tensor);
        }
        let mut state = self.exchange.barrier(state)?;
        // 2. collect this rank's column; the second barrier keeps a fast rank from posting the
        //    next collective before every rank has collected this one
        let mut received = Vec::with_capacity(size);
        for from in 0..size {
            let tensor =
                state.mailbox[from][self.rank]
                    .take()
                    .ok_or_else(|| PipelineError::Collective {
                        message: format!("rank {from} posted nothing for rank {}", self.rank),
                    })?;
            received.push(tensor);
        }
        drop(self.exchange.barrier(state)?);
        // 3. onto this rank's device (a device-to-device copy across GPUs, an alias on one)
        received
            .into_iter()
            .map(|t| Ok(t.f_to_device(self.device)?))
            .collect()
    }

    fn abort(&self, reason: &str) {
        let mut state = self.exchange.lock();
        if state.aborted.is_none() {
            state.aborted = Some(reason.to_string());
        }
        // Drop what was posted: the tensors may be large and nobody will collect them.
        for row in state.mailbox.iter_mut() {
            for slot in row.iter_mut() {
                *slot = None;
            }
        }
        self.exchange.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

    fn run_ranks<T: Send>(size: usize, work: impl Fn(InProcessGroup) -> T + Sync) -> Vec<T> {
        let groups = InProcessGroup::new(&vec![Device::Cpu; size]);
        std::thread::scope(|s| {
            let handles: Vec<_> = groups.into_iter().map(|g| s.spawn(|| work(g))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_to_all_delivers_each_tensor_to_its_rank_in_order() {
        let results = run_ranks(3, |g| {
            let me = g.rank() as f64;
            // rank r sends 10·r + j to rank j, twice in a row (the mailbox is reused)
            let mut got = Vec::new();
            for round in 0..2 {
                let send = (0..3)
                    .map(|j| Tensor::from(10.0 * me + j as f64 + 100.0 * round as f64))
                    .collect();
                let recv = g.all_to_all(send).unwrap();
                got.push(recv.iter().map(|t| t.double_value(&[])).collect::<Vec<_>>());
            }
            (g.rank(), got)
        });
        for (rank, got) in results {
            let r = rank as f64;
            assert_eq!(got[0], vec![r, 10.0 + r, 20.0 + r]);
            assert_eq!(got[1], vec![100.0 + r, 110.0 + r, 120.0 + r]);
        }
    }

    #[test]
    fn all_gather_returns_every_rank_in_rank_order() {
        let results = run_ranks(4, |g| {
            let t = Tensor::full([2], g.rank() as f64, (Kind::Float, Device::Cpu));
            let all = g.all_gather(&t).unwrap();
            all.iter().map(|t| t.double_value(&[1])).collect::<Vec<_>>()
        });
        for got in results {
            assert_eq!(got, vec![0.0, 1.0, 2.0, 3.0]);
        }
    }

    #[test]
    fn the_barrier_waits_for_every_rank_and_fails_once_aborted() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (arrived, left) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let results = run_ranks(3, |g| {
            arrived.fetch_add(1, Ordering::SeqCst);
            g.barrier().unwrap();
            let all_there = arrived.load(Ordering::SeqCst) == 3;
            if g.rank() == 2 {
                // abort once the others left the first barrier, as they wait at the second
                while left.load(Ordering::SeqCst) < 2 {
                    std::thread::yield_now();
                }
                g.abort("rank 2 failed");
                return (all_there, None);
            }
            left.fetch_add(1, Ordering::SeqCst);
            (all_there, Some(g.barrier().unwrap_err().to_string()))
        });
        for (all_there, error) in results {
            assert!(
                all_there,
                "a rank left the barrier before every rank arrived"
            );
            if let Some(error) = error {
                assert!(error.contains("rank 2 failed"), "{error}");
            }
        }
    }

    #[test]
    fn an_aborted_rank_releases_its_waiting_peers_with_an_error() {
        let results = run_ranks(3, |g| {
            if g.rank() == 2 {
                g.abort("rank 2 ran out of memory");
                return None;
            }
            Some(g.all_gather(&Tensor::from(1.0)).unwrap_err().to_string())
        });
        for message in results.into_iter().flatten() {
            assert!(message.contains("rank 2 ran out of memory"), "{message}");
        }
    }
}
