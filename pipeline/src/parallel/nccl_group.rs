//! [`NcclGroup`]: the [`Communicator`] of ranks on distinct GPUs whose tensors move through
//! NCCL (NVLink or PCIe, GPU to GPU, without the host).
//!
//! NCCL moves bytes into buffers the receiver allocated beforehand, so every collective first
//! tells each receiver the dtype and shape of what it will get: the ranks are threads of one
//! process, and these few integers go through an [`InProcessGroup`] of host tensors, which also
//! gives the group [`Communicator::abort`]'s semantics (a rank waiting there for a failed peer
//! is released with an error), and a barrier there after the receive buffers are allocated
//! keeps a rank that failed before its NCCL calls from leaving its peers' transfers waiting on
//! the GPU. Then one NCCL group of sends and receives carries the tensors —
//! the all-to-all of the Ulysses exchange, and the all-gather as an all-to-all of one tensor.
//!
//! Creating communicators (`ncclCommInitAll`, then NCCL's connections at their first use)
//! takes long enough to show in every job, so the communicators of a run that ended without an
//! abort are kept ([`IdleSets`]) and the next run on the same GPUs takes them back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::parallel::comm::{Communicator, InProcessGroup};
use crate::parallel::nccl::{self, Comm, Nccl, Transfer};

/// One rank's handle on an NCCL group. Made by [`NcclGroup::new`], one per rank; each handle
/// moves to its rank's thread.
pub struct NcclGroup {
    /// Taken out only when the handle is dropped, to be kept for the next run.
    comm: Option<Comm>,
    /// Which set of communicators (one `ncclCommInitAll`) `comm` belongs to, on which GPUs.
    set: u64,
    ordinals: Vec<usize>,
    /// Dtypes and shapes, host to host, and the group's abort.
    shapes: InProcessGroup,
    /// Set by the first rank that aborts: every handle then aborts its communicator when it is
    /// dropped (a destroy would wait for operations that a failed peer never matches).
    aborted: Arc<AtomicBool>,
    rank: usize,
    device: Device,
}

/// The dtypes NCCL carries, in the order their code travels in a shape message.
const KINDS: [Kind; 11] = [
    Kind::Int8,
    Kind::Uint8,
    Kind::Bool,
    Kind::Int,
    Kind::Int64,
    Kind::Half,
    Kind::Float,
    Kind::Double,
    Kind::BFloat16,
    Kind::Float8e4m3fn,
    Kind::Float8e5m2,
];

/// The CUDA ordinals of `devices`, refused in one line each when NCCL cannot take them: not a
/// GPU, or a GPU named twice (NCCL runs one rank per GPU).
pub fn nccl_ordinals(devices: &[Device]) -> Result<Vec<usize>> {
    let mut ordinals = Vec::with_capacity(devices.len());
    for (rank, device) in devices.iter().enumerate() {
        let Device::Cuda(ordinal) = *device else {
            return Err(PipelineError::invalid(
                "collectives",
                format!("NCCL needs a CUDA device per rank, rank {rank} is on {device:?} — set [model] collectives = \"copy\" (T2V_MODEL__COLLECTIVES=copy) or run on GPUs"),
            ));
        };
        if ordinals.contains(&ordinal) {
            return Err(PipelineError::invalid(
                "collectives",
                format!("two ranks on cuda:{ordinal}, which NCCL refuses (one rank per GPU) — list each GPU once in [model] devices, or set [model] collectives = \"copy\""),
            ));
        }
        ordinals.push(ordinal);
    }
    Ok(ordinals)
}

impl NcclGroup {
    /// Handles for a group whose rank `i` computes on `devices[i]` (distinct GPUs, all present).
    pub fn new(library: &Arc<Nccl>, devices: &[Device]) -> Result<Vec<Self>> {
        let ordinals = nccl_ordinals(devices)?;
        let visible = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        if let Some(missing) = ordinals.iter().find(|&&o| o >= visible) {
            return Err(PipelineError::invalid(
                "collectives",
                format!("NCCL rank on cuda:{missing}, but libtorch sees {visible} CUDA device(s) — list GPUs below {visible} in [model] devices (check CUDA_VISIBLE_DEVICES)"),
            ));
        }
        let kept = idle_sets().take(&ordinals);
        let (set, comms) = match kept {
            Some(kept) => kept,
            None => {
                keep_nvlink_multicast_off();
                let comms = library
                    .init_all(&ordinals)
                    .map_err(|e| PipelineError::Collective {
                        message: format!("creating the NCCL communicators of {devices:?}: {e} — set [model] collectives = \"copy\" to run without NCCL"),
                    })?;
                (idle_sets().new_set(), comms)
            }
        };
        let aborted = Arc::new(AtomicBool::new(false));
        let shapes = InProcessGroup::new(&vec![Device::Cpu; devices.len()]);
        Ok(comms
            .into_iter()
            .zip(shapes)
            .zip(devices)
            .enumerate()
            .map(|(rank, ((comm, shapes), &device))| Self {
                comm: Some(comm),
                set,
                ordinals: ordinals.clone(),
                shapes,
                aborted: Arc::clone(&aborted),
                rank,
                device,
            })
            .collect())
    }

    /// `t` on this rank's GPU, contiguous, of a dtype NCCL carries.
    fn prepare(&self, t: Tensor) -> Result<Tensor> {
        if kind_code(t.kind()).is_none() {
            return Err(PipelineError::Collective {
                message: format!(
                    "NCCL cannot carry {:?} tensors (it takes {KINDS:?}) — convert before the exchange, or set [model] collectives = \"copy\"",
                    t.kind()
                ),
            });
        }
        Ok(t.f_to_device(self.device)?.f_contiguous()?)
    }

    fn comm(&self) -> Result<&Comm> {
        self.comm.as_ref().ok_or_else(|| PipelineError::Collective {
            message: format!("rank {}'s NCCL communicator is gone", self.rank),
        })
    }

    fn failed(&self, e: String) -> PipelineError {
        PipelineError::Collective {
            message: format!("NCCL on rank {} ({:?}): {e}", self.rank, self.device),
        }
    }
}

/// NVLink multicast (NVLS) stays off unless the user asked for it: the machines this runs on
/// keep it disabled, and NCCL would otherwise try to set it up for every communicator (a
/// failure there fails the init). An explicit `NCCL_NVLS_ENABLE` is left as it is.
///
/// Setting a variable races with threads reading the environment, so the worker calls this at
/// the top of `main`, before any thread starts; the call before each communicator is created
/// then finds it set and changes nothing.
pub fn keep_nvlink_multicast_off() {
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        std::env::set_var("NCCL_NVLS_ENABLE", "0");
    }
}

fn kind_code(kind: Kind) -> Option<i64> {
    KINDS.iter().position(|&k| k == kind).map(|i| i as i64)
}

/// The shape message of `t`: its dtype's code, then its sizes.
fn describe(t: &Tensor) -> Tensor {
    let code = kind_code(t.kind()).unwrap_or(-1);
    let message: Vec<i64> = std::iter::once(code).chain(t.size()).collect();
    Tensor::from_slice(&message)
}

/// (dtype, sizes) of a shape message.
fn read_description(message: &Tensor) -> Result<(Kind, Vec<i64>)> {
    let values = Vec::<i64>::try_from(message)?;
    let kind = values
        .first()
        .and_then(|&code| usize::try_from(code).ok())
        .and_then(|code| KINDS.get(code).copied())
        .ok_or_else(|| PipelineError::Collective {
            message: format!("a peer announced an unknown dtype in {values:?}"),
        })?;
    Ok((kind, values[1..].to_vec()))
}

impl Communicator for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shapes.size()
    }

    fn all_to_all(&self, send: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let size = self.size();
        if send.len() != size {
            return Err(PipelineError::Collective {
                message: format!(
                    "all_to_all got {} tensors for a group of {size}",
                    send.len()
                ),
            });
        }
        // 1. what each peer will receive, announced host to host
        let send = send
            .into_iter()
            .map(|t| self.prepare(t))
            .collect::<Result<Vec<_>>>()?;
        let announced = self
            .shapes
            .all_to_all(send.iter().map(describe).collect())?;
        // 2. receive buffers of the senders' dtypes and shapes on this rank's GPU
        let received = announced
            .iter()
            .map(|m| {
                let (kind, shape) = read_description(m)?;
                Ok(Tensor::f_empty(&shape, (kind, self.device))?)
            })
            .collect::<Result<Vec<_>>>()?;
        // 3. every rank has its buffers: a rank that failed to allocate aborts the group here,
        //    before any peer enqueued a transfer that would wait for it on the GPU
        self.shapes.barrier()?;
        // 4. one NCCL group: a send to and a receive from every rank (itself included)
        let transfers: Vec<Transfer<'_>> = send
            .iter()
            .enumerate()
            .map(|(peer, tensor)| Transfer::Send { tensor, peer })
            .chain(
                received
                    .iter()
                    .enumerate()
                    .map(|(peer, tensor)| Transfer::Recv { tensor, peer }),
            )
            .collect();
        self.comm()?
            .exchange(&transfers)
            .map_err(|e| self.failed(e))?;
        Ok(received)
    }

    fn abort(&self, reason: &str) {
        self.aborted.store(true, Ordering::SeqCst);
        self.shapes.abort(reason);
        if let Some(comm) = &self.comm {
            comm.abort();
        }
    }
}

impl Drop for NcclGroup {
    /// Keeps the communicator for the next run on these GPUs, unless the group was aborted:
    /// then it is aborted too (a destroy would wait for operations a failed peer never
    /// matches). A run's ranks drop their handles only after every rank answered its last
    /// step, so no abort comes after a handle was kept.
    fn drop(&mut self) {
        let Some(comm) = self.comm.take() else {
            return;
        };
        if self.aborted.load(Ordering::SeqCst) {
            comm.abort();
        } else {
            let ordinals = std::mem::take(&mut self.ordinals);
            idle_sets().put(self.set, ordinals, self.rank, comm);
        }
    }
}

/// Communicators of earlier runs, waiting for the next run on the same GPUs.
fn idle_sets() -> std::sync::MutexGuard<'static, IdleSets<Comm>> {
    static IDLE: Mutex<IdleSets<Comm>> = Mutex::new(IdleSets::new());
    // Every update is a single push or a removal: a panic elsewhere leaves the sets whole.
    IDLE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Members of sets of communicators (each set made by one `ncclCommInitAll` over some GPUs),
/// returned one by one as their ranks end; a set is handed out again only whole, so ranks
/// never mix communicators of different sets.
struct IdleSets<T> {
    next_set: u64,
    /// (set, its GPUs, rank, communicator).
    members: Vec<(u64, Vec<usize>, usize, T)>,
}

impl<T> IdleSets<T> {
    const fn new() -> Self {
        Self {
            next_set: 0,
            members: Vec::new(),
        }
    }

    /// A new set's id.
    fn new_set(&mut self) -> u64 {
        self.next_set += 1;
        self.next_set
    }

    fn put(&mut self, set: u64, ordinals: Vec<usize>, rank: usize, item: T) {
        self.members.push((set, ordinals, rank, item));
    }

    /// A whole set over `ordinals` (rank `i` on `ordinals[i]`), in rank order.
    fn take(&mut self, ordinals: &[usize]) -> Option<(u64, Vec<T>)> {
        let set = self.members.iter().map(|(set, ..)| *set).find(|&set| {
            (0..ordinals.len()).all(|rank| {
                self.members
                    .iter()
                    .any(|(s, o, r, _)| *s == set && o == ordinals && *r == rank)
            })
        })?;
        let mut taken: Vec<(usize, T)> = Vec::with_capacity(ordinals.len());
        let mut kept = Vec::with_capacity(self.members.len());
        for (s, o, rank, item) in self.members.drain(..) {
            if s == set {
                taken.push((rank, item));
            } else {
                kept.push((s, o, rank, item));
            }
        }
        self.members = kept;
        taken.sort_by_key(|(rank, _)| *rank);
        Some((set, taken.into_iter().map(|(_, item)| item).collect()))
    }
}

/// NCCL operations this process enqueued (see [`nccl::operations`]).
pub fn nccl_operations() -> u64 {
    nccl::operations()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_messages_round_trip_every_dtype_nccl_carries() {
        for kind in KINDS {
            assert!(nccl::datatype(kind).is_some(), "{kind:?}");
            let t = Tensor::zeros([2, 3, 5], (kind, Device::Cpu));
            assert_eq!(
                read_description(&describe(&t)).unwrap(),
                (kind, vec![2, 3, 5])
            );
        }
        let err = read_description(&Tensor::from_slice(&[-1i64, 4])).unwrap_err();
        assert!(err.to_string().contains("unknown dtype"), "{err}");
    }

    #[test]
    fn kept_communicators_are_handed_out_only_as_whole_sets_on_the_same_gpus() {
        let mut idle = IdleSets::new();
        let (a, b) = (idle.new_set(), idle.new_set());
        assert_ne!(a, b);
        // set a on GPUs [0, 1] fully returned (rank 1 first), set b only half
        idle.put(a, vec![0, 1], 1, "a1");
        idle.put(b, vec![0, 1], 0, "b0");
        idle.put(a, vec![0, 1], 0, "a0");
        assert_eq!(idle.take(&[1, 0]), None, "other GPU order, other ranks");
        assert_eq!(idle.take(&[0, 1]), Some((a, vec!["a0", "a1"])));
        assert_eq!(idle.take(&[0, 1]), None, "b is incomplete");
        idle.put(b, vec![0, 1], 1, "b1");
        assert_eq!(idle.take(&[0, 1]), Some((b, vec!["b0", "b1"])));
        assert!(idle.members.is_empty());
    }

    #[test]
    fn two_ranks_on_one_gpu_or_a_cpu_rank_are_refused_naming_the_fix() {
        let err = nccl_ordinals(&[Device::Cuda(0), Device::Cuda(1), Device::Cuda(0)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("two ranks on cuda:0") && err.contains("collectives = \"copy\""),
            "{err}"
        );
        let err = nccl_ordinals(&[Device::Cuda(0), Device::Cpu])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rank 1 is on Cpu"), "{err}");
        assert_eq!(
            nccl_ordinals(&[Device::Cuda(2), Device::Cuda(0)]).unwrap(),
            vec![2, 0]
        );
    }
}
