//! The NCCL library, loaded at run time, and one rank's communicator on it: the only code of the
//! workspace that calls into C directly.
//!
//! Calling a C library through function pointers taken from `dlopen` cannot be checked by the
//! compiler, so this module alone allows `unsafe`; everything above it ([`super::nccl_group`])
//! is safe code. What keeps the calls sound is checked here, before each call: the tensors are
//! contiguous, on the communicator's GPU, of a dtype NCCL knows, and the element count passed is
//! theirs.
//!
//! Stream: every operation is enqueued on the device's default (null) stream. tch never sets
//! another stream, so libtorch's kernels run there too (c10's `getCurrentCUDAStream` is the
//! default stream unless a stream guard says otherwise, and the default stream is `nullptr`,
//! the legacy stream). NCCL's work is therefore ordered after the kernels that produced the
//! tensors sent and before those that read what was received, with no synchronisation added;
//! and the caching allocator, which reuses freed blocks in the order of that same stream, cannot
//! hand a buffer NCCL still reads or writes to another tensor.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libloading::Library;
use tch::{Device, Kind, Tensor};

type RawComm = *mut c_void;
type CudaStream = *mut c_void;
type NcclResult = c_int;
type NcclDataType = c_int;

/// The NCCL functions used, with the signatures of `nccl.h` (enums are `int`, `size_t` is
/// `usize`, handles and streams are pointers).
struct Api {
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
    comm_init_all: unsafe extern "C" fn(*mut RawComm, c_int, *const c_int) -> NcclResult,
    group_start: unsafe extern "C" fn() -> NcclResult,
    group_end: unsafe extern "C" fn() -> NcclResult,
    send: unsafe extern "C" fn(
        *const c_void,
        usize,
        NcclDataType,
        c_int,
        RawComm,
        CudaStream,
    ) -> NcclResult,
    recv: unsafe extern "C" fn(
        *mut c_void,
        usize,
        NcclDataType,
        c_int,
        RawComm,
        CudaStream,
    ) -> NcclResult,
    comm_abort: unsafe extern "C" fn(RawComm) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(RawComm) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
}

/// NCCL, loaded. The function pointers stay valid as long as the library is loaded, which is
/// as long as this value lives (communicators hold an `Arc` of it).
pub struct Nccl {
    api: Api,
    _library: Library,
}

/// NCCL operations enqueued by this process (sends, receives, groups), for checks that NCCL
/// really carried an exchange.
static OPERATIONS: AtomicU64 = AtomicU64::new(0);

/// NCCL operations enqueued so far by this process.
pub fn operations() -> u64 {
    OPERATIONS.load(Ordering::Relaxed)
}

/// The `ncclDataType_t` of `kind`; `None` for dtypes NCCL cannot carry (complex, quantized,
/// int16, the `fnuz` float8s). Bool travels as uint8 (one byte, the same bits).
pub fn datatype(kind: Kind) -> Option<c_int> {
    Some(match kind {
        Kind::Int8 => 0,
        Kind::Uint8 | Kind::Bool => 1,
        Kind::Int => 2,
        Kind::Int64 => 4,
        Kind::Half => 6,
        Kind::Float => 7,
        Kind::Double => 8,
        Kind::BFloat16 => 9,
        Kind::Float8e4m3fn => 10,
        Kind::Float8e5m2 => 11,
        _ => return None,
    })
}

impl Nccl {
    /// Loads NCCL from `path` (a soname such as `libnccl.so.2` is looked up as `dlopen` does:
    /// already loaded by libtorch_cuda, or on the library path).
    pub fn open(path: &str) -> Result<Arc<Self>, String> {
        // SAFETY: loading runs the library's initialisers; NCCL's only set up its own state.
        let library = unsafe { Library::new(path) }.map_err(|e| e.to_string())?;
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the field this initialises has the signature nccl.h declares for
                // $name; the pointer is used only while `library` stays loaded (owned below).
                *unsafe { library.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{path} lacks {}: {e}", $name))?
            };
        }
        let api = Api {
            get_version: symbol!("ncclGetVersion"),
            comm_init_all: symbol!("ncclCommInitAll"),
            group_start: symbol!("ncclGroupStart"),
            group_end: symbol!("ncclGroupEnd"),
            send: symbol!("ncclSend"),
            recv: symbol!("ncclRecv"),
            comm_abort: symbol!("ncclCommAbort"),
            comm_destroy: symbol!("ncclCommDestroy"),
            get_error_string: symbol!("ncclGetErrorString"),
        };
        Ok(Arc::new(Self {
            api,
            _library: library,
        }))
    }

    /// NCCL's version code, e.g. 22809 for 2.28.9.
    pub fn version(&self) -> Result<i32, String> {
        let mut version: c_int = 0;
        // SAFETY: ncclGetVersion writes one int through a valid pointer.
        let code = unsafe { (self.api.get_version)(&mut version) };
        self.check("ncclGetVersion", code)?;
        Ok(version)
    }

    /// `Ok` for ncclSuccess, else NCCL's own description of `code`.
    fn check(&self, what: &str, code: NcclResult) -> Result<(), String> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
        let text = unsafe { CStr::from_ptr((self.api.get_error_string)(code)) };
        Err(format!(
            "{what} failed: {} (code {code})",
            text.to_string_lossy()
        ))
    }

    /// One communicator per CUDA ordinal of `devices` (rank `i` on `devices[i]`), made
    /// together by this thread (`ncclCommInitAll`). The ordinals must be distinct and present.
    pub fn init_all(self: &Arc<Self>, devices: &[usize]) -> Result<Vec<Comm>, String> {
        let ordinals = devices
            .iter()
            .map(|&d| c_int::try_from(d).map_err(|_| format!("CUDA ordinal {d} is out of range")))
            .collect::<Result<Vec<_>, _>>()?;
        let count = c_int::try_from(ordinals.len()).map_err(|_| "too many ranks".to_string())?;
        let mut raw: Vec<RawComm> = vec![std::ptr::null_mut(); ordinals.len()];
        // SAFETY: `raw` has room for `count` handles and `ordinals` holds `count` ints.
        let code = unsafe { (self.api.comm_init_all)(raw.as_mut_ptr(), count, ordinals.as_ptr()) };
        self.check("ncclCommInitAll", code)?;
        Ok(raw
            .into_iter()
            .zip(devices)
            .map(|(raw, &device)| Comm {
                nccl: Arc::clone(self),
                raw: std::cell::Cell::new(raw),
                device,
            })
            .collect())
    }
}

/// One rank's NCCL communicator, used by one thread at a time (it is `Send`, not `Sync`).
/// Dropping it destroys the communicator; [`Comm::abort`] aborts it first.
pub struct Comm {
    nccl: Arc<Nccl>,
    /// Null once aborted.
    raw: std::cell::Cell<RawComm>,
    device: usize,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; `Comm` is not
// `Sync`, so only the thread that owns it calls NCCL with it.
unsafe impl Send for Comm {}

/// One point-to-point transfer of a grouped exchange.
pub enum Transfer<'a> {
    Send { tensor: &'a Tensor, peer: usize },
    Recv { tensor: &'a Tensor, peer: usize },
}

impl Comm {
    /// Enqueues `transfers` as one NCCL group on the default stream of this rank's GPU. Every
    /// tensor must be contiguous, on this rank's GPU, of a dtype NCCL carries; receive buffers
    /// are overwritten (whatever aliases them sees the new values).
    pub fn exchange(&self, transfers: &[Transfer<'_>]) -> Result<(), String> {
        let raw = self.raw.get();
        if raw.is_null() {
            return Err("the NCCL communicator was aborted".into());
        }
        let checked = transfers
            .iter()
            .map(|t| match t {
                Transfer::Send { tensor, peer } => {
                    Ok((true, self.buffer(tensor)?, peer_rank(*peer)?))
                }
                Transfer::Recv { tensor, peer } => {
                    Ok((false, self.buffer(tensor)?, peer_rank(*peer)?))
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        let api = &self.nccl.api;
        // SAFETY: ncclGroupStart/End only bracket the calls of this thread.
        self.nccl
            .check("ncclGroupStart", unsafe { (api.group_start)() })?;
        let mut enqueued = Ok(());
        for (is_send, (ptr, count, datatype), peer) in checked {
            // SAFETY: `buffer` checked that `ptr` is the start of a contiguous tensor of
            // `count` elements of `datatype` on this communicator's GPU. NCCL reads or writes
            // it later, on the null stream: the stream the caching allocator orders the reuse
            // of the tensor's block on once it is freed (module doc), so the memory stays the
            // tensor's until the transfer is done.
            let code = unsafe {
                if is_send {
                    (api.send)(ptr, count, datatype, peer, raw, std::ptr::null_mut())
                } else {
                    (api.recv)(ptr, count, datatype, peer, raw, std::ptr::null_mut())
                }
            };
            OPERATIONS.fetch_add(1, Ordering::Relaxed);
            enqueued = enqueued.and(
                self.nccl
                    .check(if is_send { "ncclSend" } else { "ncclRecv" }, code),
            );
        }
        // SAFETY: closes the group opened above (always, so the thread's group depth returns
        // to zero even when an enqueue failed).
        let ended = self
            .nccl
            .check("ncclGroupEnd", unsafe { (api.group_end)() });
        enqueued.and(ended)
    }

    /// (data pointer, element count, NCCL datatype) of `tensor`, checked for NCCL.
    fn buffer(&self, tensor: &Tensor) -> Result<(*mut c_void, usize, c_int), String> {
        if tensor.device() != Device::Cuda(self.device) {
            return Err(format!(
                "a tensor on {:?} given to the NCCL communicator of cuda:{}",
                tensor.device(),
                self.device
            ));
        }
        if !tensor.is_contiguous() {
            return Err("a non-contiguous tensor given to NCCL".into());
        }
        let kind = tensor.kind();
        let datatype =
            datatype(kind).ok_or_else(|| format!("NCCL cannot carry {kind:?} tensors"))?;
        Ok((tensor.data_ptr(), tensor.numel(), datatype))
    }

    /// Aborts the communicator: operations of it still queued or running on the GPU are
    /// stopped, so a peer's kernel waiting for this rank does not wait forever. Later
    /// exchanges fail.
    pub fn abort(&self) {
        let raw = self.raw.replace(std::ptr::null_mut());
        if !raw.is_null() {
            // SAFETY: `raw` is a live communicator (not yet aborted or destroyed), used by no
            // other thread; it is never used again.
            let _ = unsafe { (self.nccl.api.comm_abort)(raw) };
        }
    }
}

fn peer_rank(peer: usize) -> Result<c_int, String> {
    c_int::try_from(peer).map_err(|_| format!("peer {peer} out of range"))
}

impl Drop for Comm {
    fn drop(&mut self) {
        let raw = self.raw.replace(std::ptr::null_mut());
        if !raw.is_null() {
            // SAFETY: as in `abort`; destroy waits for this communicator's queued work.
            let _ = unsafe { (self.nccl.api.comm_destroy)(raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_map_to_nccl_datatypes_and_others_are_refused() {
        // the values of nccl.h's ncclDataType_t
        assert_eq!(datatype(Kind::BFloat16), Some(9));
        assert_eq!(datatype(Kind::Half), Some(6));
        assert_eq!(datatype(Kind::Float), Some(7));
        assert_eq!(datatype(Kind::Double), Some(8));
        assert_eq!(datatype(Kind::Int64), Some(4));
        assert_eq!(datatype(Kind::Int), Some(2));
        assert_eq!(datatype(Kind::Uint8), Some(1));
        assert_eq!(datatype(Kind::Bool), Some(1));
        assert_eq!(datatype(Kind::Int8), Some(0));
        assert_eq!(datatype(Kind::Float8e4m3fn), Some(10));
        for kind in [
            Kind::ComplexFloat,
            Kind::Int16,
            Kind::QInt8,
            Kind::Float8e4m3fnuz,
        ] {
            assert_eq!(datatype(kind), None, "{kind:?}");
        }
    }

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let err = Nccl::open("/nonexistent/libnccl.so.2").err().unwrap();
        assert!(err.contains("/nonexistent/libnccl.so.2"), "{err}");
    }
}
