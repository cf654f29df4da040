//! Which collectives a parallel run uses: NCCL between distinct GPUs, or the in-process copies.
//!
//! [`CollectivesChoice`] is the setting (`auto`, `nccl`, `copy`); [`select`] is the decision on
//! a plan's devices alone (a pure function); [`resolve`] loads NCCL where the decision asks for
//! it. `auto` takes NCCL when the ranks sit on two or more distinct GPUs, one rank per GPU, and
//! the copies otherwise (one device, the CPU, the tests); an `auto` whose NCCL cannot be loaded
//! falls back to the copies with one warning, a requested `nccl` fails instead.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Once};

use tch::Device;

use crate::error::{PipelineError, Result};
use crate::parallel::comm::{Communicator, InProcessGroup};
use crate::parallel::nccl::Nccl;
use crate::parallel::nccl_group::{nccl_ordinals, NcclGroup};

/// Where NCCL is loaded from unless `T2V_NCCL_LIBRARY` says otherwise: the soname that
/// libtorch_cuda itself links (PyTorch's CUDA wheels ship it), so `dlopen` finds the copy
/// already loaded.
pub const DEFAULT_NCCL_LIBRARY: &str = "libnccl.so.2";

/// The environment variable that names another NCCL library (a path or a soname).
pub const NCCL_LIBRARY_ENV: &str = "T2V_NCCL_LIBRARY";

/// The `collectives` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CollectivesChoice {
    /// NCCL when the ranks are on two or more distinct GPUs, the copies otherwise.
    #[default]
    Auto,
    /// NCCL, or the run fails.
    Nccl,
    /// The in-process copies ([`InProcessGroup`]).
    Copy,
}

impl FromStr for CollectivesChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "nccl" => Ok(Self::Nccl),
            "copy" => Ok(Self::Copy),
            other => Err(format!(
                "collectives {other:?}: expected auto, nccl or copy"
            )),
        }
    }
}

impl fmt::Display for CollectivesChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Nccl => "nccl",
            Self::Copy => "copy",
        })
    }
}

/// What [`select`] decided before any library is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Copy,
    /// NCCL; `required` when the user asked for it (no fallback).
    Nccl {
        required: bool,
    },
}

/// The collectives `choice` asks for on ranks placed on `devices`. `auto` takes NCCL only when
/// every rank has a GPU of its own and there are at least two; a requested `nccl` on devices
/// NCCL cannot take (the CPU, a GPU named twice) is refused in one line.
pub fn select(choice: CollectivesChoice, devices: &[Device]) -> Result<Selection> {
    match choice {
        CollectivesChoice::Copy => Ok(Selection::Copy),
        CollectivesChoice::Nccl => {
            nccl_ordinals(devices)?;
            Ok(Selection::Nccl { required: true })
        }
        CollectivesChoice::Auto => Ok(if devices.len() >= 2 && nccl_ordinals(devices).is_ok() {
            Selection::Nccl { required: false }
        } else {
            Selection::Copy
        }),
    }
}

/// The collectives a run uses, resolved.
#[derive(Clone)]
pub enum Collectives {
    Copy,
    Nccl {
        library: Arc<Nccl>,
        /// NCCL's version code (e.g. 22809 for 2.28.9).
        version: i32,
    },
}

impl fmt::Debug for Collectives {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Collectives {
    /// `NCCL 2.28.9` or `in-process copies`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Copy => f.write_str("in-process copies"),
            Self::Nccl { version, .. } => write!(f, "NCCL {}", version_text(*version)),
        }
    }
}

/// NCCL's version code as `major.minor.patch` (codes since 2.9: `major·10000 + minor·100 +
/// patch`).
pub fn version_text(code: i32) -> String {
    format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100)
}

impl Collectives {
    /// One handle per rank of a group whose rank `i` computes on `devices[i]`.
    pub fn group(&self, devices: &[Device]) -> Result<Vec<Box<dyn Communicator>>> {
        Ok(match self {
            Self::Copy => InProcessGroup::new(devices)
                .into_iter()
                .map(|g| Box::new(g) as Box<dyn Communicator>)
                .collect(),
            Self::Nccl { library, .. } => NcclGroup::new(library, devices)?
                .into_iter()
                .map(|g| Box::new(g) as Box<dyn Communicator>)
                .collect(),
        })
    }
}

/// The NCCL library path: `T2V_NCCL_LIBRARY`, else [`DEFAULT_NCCL_LIBRARY`].
pub fn nccl_library_path() -> String {
    std::env::var(NCCL_LIBRARY_ENV).unwrap_or_else(|_| DEFAULT_NCCL_LIBRARY.to_string())
}

/// NCCL from [`nccl_library_path`], with its version; the error is one line naming the cause
/// and the fixes.
pub fn load_nccl() -> Result<Collectives> {
    let path = nccl_library_path();
    let cannot = |why: String| {
        PipelineError::invalid(
            "collectives",
            format!("NCCL cannot be loaded from {path} ({why}) — install NCCL (PyTorch's CUDA wheel ships libnccl.so.2) or point {NCCL_LIBRARY_ENV} at it, or set [model] collectives = \"copy\""),
        )
    };
    let library = Nccl::open(&path).map_err(cannot)?;
    let version = library.version().map_err(cannot)?;
    Ok(Collectives::Nccl { library, version })
}

/// The collectives `choice` gives on `devices`, NCCL loaded where selected. A requested NCCL
/// that cannot load is an error; an `auto` one falls back to the copies and warns once per
/// process, naming why.
pub fn resolve(choice: CollectivesChoice, devices: &[Device]) -> Result<Collectives> {
    match select(choice, devices)? {
        Selection::Copy => Ok(Collectives::Copy),
        Selection::Nccl { required: true } => load_nccl(),
        Selection::Nccl { required: false } => match load_nccl() {
            Ok(nccl) => Ok(nccl),
            Err(e) => {
                static WARNED: Once = Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(error = %e, "collectives = auto on several GPUs: using the in-process copies (device-to-device copies through the ranks' threads) instead of NCCL");
                });
                Ok(Collectives::Copy)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(ordinals: &[usize]) -> Vec<Device> {
        ordinals.iter().map(|&o| Device::Cuda(o)).collect()
    }

    #[test]
    fn auto_takes_nccl_only_on_two_or_more_distinct_gpus() {
        let auto = |d: &[Device]| select(CollectivesChoice::Auto, d).unwrap();
        assert_eq!(auto(&gpus(&[0, 1])), Selection::Nccl { required: false });
        assert_eq!(
            auto(&gpus(&[0, 1, 2, 3, 4, 5, 6, 7])),
            Selection::Nccl { required: false }
        );
        assert_eq!(auto(&gpus(&[0])), Selection::Copy);
        assert_eq!(auto(&gpus(&[0, 0])), Selection::Copy);
        assert_eq!(auto(&[Device::Cpu, Device::Cpu]), Selection::Copy);
        assert_eq!(
            select(CollectivesChoice::Copy, &gpus(&[0, 1])).unwrap(),
            Selection::Copy
        );
        assert_eq!(
            select(CollectivesChoice::Nccl, &gpus(&[0])).unwrap(),
            Selection::Nccl { required: true }
        );
    }

    #[test]
    fn requested_nccl_on_devices_it_cannot_take_is_refused() {
        let err = select(CollectivesChoice::Nccl, &gpus(&[0, 0]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("two ranks on cuda:0"), "{err}");
        let err = select(CollectivesChoice::Nccl, &[Device::Cpu])
            .unwrap_err()
            .to_string();
        assert!(err.contains("NCCL needs a CUDA device per rank"), "{err}");
        // resolve refuses before loading anything
        let err = resolve(CollectivesChoice::Nccl, &gpus(&[1, 1]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("two ranks on cuda:1"), "{err}");
    }

    #[test]
    fn the_choice_parses_and_prints() {
        for text in ["auto", "nccl", "copy"] {
            assert_eq!(text.parse::<CollectivesChoice>().unwrap().to_string(), text);
        }
        let err = "mpi".parse::<CollectivesChoice>().unwrap_err();
        assert!(err.contains("expected auto, nccl or copy"), "{err}");
    }

    /// The only test that sets T2V_NCCL_LIBRARY (no other test reads it): a requested NCCL that
    /// cannot be loaded fails naming the file and the fixes, an auto one falls back to copies.
    #[test]
    fn nccl_that_cannot_load_fails_when_requested_and_falls_back_on_auto() {
        std::env::set_var(NCCL_LIBRARY_ENV, "/nonexistent/libnccl.so.2");
        let requested = resolve(CollectivesChoice::Nccl, &gpus(&[0, 1]));
        let auto = resolve(CollectivesChoice::Auto, &gpus(&[0, 1]));
        std::env::remove_var(NCCL_LIBRARY_ENV);
        let err = requested.unwrap_err().to_string();
        assert!(
            err.contains("NCCL cannot be loaded from /nonexistent/libnccl.so.2")
                && err.contains("collectives = \"copy\"")
                && !err.contains('\n'),
            "{err}"
        );
        assert!(matches!(auto.unwrap(), Collectives::Copy));
    }

    #[test]
    fn the_version_prints_as_major_minor_patch() {
        assert_eq!(version_text(22809), "2.28.9");
        assert_eq!(version_text(21903), "2.19.3");
        assert_eq!(Collectives::Copy.to_string(), "in-process copies");
    }
}
