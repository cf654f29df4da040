//! One job over several ranks: CFG parallel × Ulysses sequence parallel denoising, and the VAE
//! decode split over the ranks.
//!
//! One process, one OS thread per rank. The denoising loop (scheduler, callbacks, checkpoints)
//! stays on the caller's thread, exactly as in a single-device run; only the noise prediction
//! of a step fans out. Every rank holds the experts on its device (shared, not copied, by
//! ranks placed on one device) and runs its part of the step:
//! - **CFG parallel** (`cfg` = 2): ranks of CFG group 0 predict with the prompt, those of group 1
//!   with the negative prompt, at the same time; each pair exchanges its noise prediction and
//!   both apply `uncond + g·(cond − uncond)` — nothing else crosses.
//! - **Ulysses** (`ulysses` = n): the tokens of a forward split over n ranks; all-to-alls turn
//!   token shards into head groups around the self-attention ([`SequenceShard`]).
//!
//! Rank `r` is CFG group `r / ulysses`, sequence rank `r % ulysses`. A step's result is rank 0's;
//! the latents and the checkpoint state are the same whatever the layout, so a job checkpointed
//! with N ranks resumes with any other count.
//!
//! # Layout
//! - [`comm`]: the [`Communicator`] collectives and [`InProcessGroup`], their in-process form
//!   (threads exchanging tensors; device-to-device copies across GPUs).
//! - [`nccl_group`]: [`NcclGroup`], the collectives through NCCL between distinct GPUs, on the
//!   library loaded at run time by [`nccl`] (the workspace's only `unsafe` code).
//! - [`collectives`]: which of the two a run uses (`[model] collectives`: auto, nccl, copy).
//! - [`sequence`]: [`SequenceShard`], Ulysses' token shards and all-to-alls.
//! - [`ranks`]: [`run_ranks`] — the rank threads of one run — and [`RankPool`], the
//!   [`crate::denoise::NoisePredictor`] the denoising loop drives them through.
//! - [`decode`]: the VAE decode with its spatial tiles spread over the ranks.

pub mod collectives;
pub mod comm;
pub mod decode;
pub mod nccl;
pub mod nccl_group;
pub mod ranks;
pub mod sequence;

use std::fmt;
use std::str::FromStr;

use tch::Device;

pub use collectives::{Collectives, CollectivesChoice};
pub use comm::{Communicator, InProcessGroup};
pub use nccl_group::NcclGroup;
pub use ranks::{prepare_collectives, run_ranks, RankModels, RankPool};
pub use sequence::SequenceShard;

use crate::error::{PipelineError, Result};

/// How the ranks of a run divide the work: `cfg` CFG groups (1 or 2) × `ulysses` ranks that
/// split each forward's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelLayout {
    pub cfg: usize,
    pub ulysses: usize,
}

impl ParallelLayout {
    /// One rank: today's single-device run.
    pub const fn single() -> Self {
        Self { cfg: 1, ulysses: 1 }
    }

    /// `cfg` × `ulysses`, checked against a model of `heads` attention heads.
    pub fn new(cfg: usize, ulysses: usize, heads: i64) -> Result<Self> {
        let layout = Self { cfg, ulysses };
        layout.check(heads)?;
        Ok(layout)
    }

    /// The layout for `devices` devices and a model of `heads` heads: CFG parallel on two
    /// groups whenever the count is even (its exchange is one noise prediction per step, the
    /// cheapest split there is), Ulysses over the rest.
    pub fn for_devices(devices: usize, heads: i64) -> Result<Self> {
        let cfg = if devices >= 2 && devices.is_multiple_of(2) {
            2
        } else {
            1
        };
        Self::new(cfg, devices.max(1) / cfg, heads)
    }

    pub fn world_size(&self) -> usize {
        self.cfg * self.ulysses
    }

    /// (CFG group, sequence rank) of `rank`.
    pub fn coords(&self, rank: usize) -> (usize, usize) {
        (rank / self.ulysses, rank % self.ulysses)
    }

    /// Whether a model of `heads` heads can run this layout.
    pub fn check(&self, heads: i64) -> Result<()> {
        if !(1..=2).contains(&self.cfg) {
            return Err(PipelineError::invalid(
                "parallel layout",
                format!("CFG degree {} — it is 1 or 2 (cond and uncond)", self.cfg),
            ));
        }
        if self.ulysses == 0 || heads % self.ulysses as i64 != 0 {
            let fits: Vec<String> = (1..=heads)
                .filter(|d| heads % d == 0 && *d <= 16)
                .map(|d| d.to_string())
                .collect();
            return Err(PipelineError::invalid(
                "parallel layout",
                format!(
                    "Ulysses degree {} must divide the model's {heads} attention heads (use one of {})",
                    self.ulysses,
                    fits.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for ParallelLayout {
    /// `2x4`: CFG degree × Ulysses degree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.cfg, self.ulysses)
    }
}

impl FromStr for ParallelLayout {
    type Err = String;

    /// `CFGxULYSSES`, e.g. `2x4` (not checked against a model: see [`ParallelLayout::check`]).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parse = |part: &str| part.trim().parse::<usize>().ok().filter(|&n| n > 0);
        match s.split_once('x').map(|(c, u)| (parse(c), parse(u))) {
            Some((Some(cfg), Some(ulysses))) => Ok(Self { cfg, ulysses }),
            _ => Err(format!(
                "parallel layout {s:?}: expected CFGxULYSSES, e.g. 2x4 or 1x2"
            )),
        }
    }
}

/// A layout and the device of every rank (`devices.len() == layout.world_size()`; ranks may
/// share a device). Rank 0's device is where the denoising loop's tensors live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParallelPlan {
    pub layout: ParallelLayout,
    pub devices: Vec<Device>,
    /// What moves the ranks' tensors (`auto` unless [`Self::with_collectives`] says otherwise).
    pub collectives: CollectivesChoice,
}

impl ParallelPlan {
    /// Checks that there is one device per rank.
    pub fn new(layout: ParallelLayout, devices: Vec<Device>) -> Result<Self> {
        if devices.len() != layout.world_size() {
            return Err(PipelineError::invalid(
                "parallel plan",
                format!(
                    "layout {layout} has {} ranks, {} devices were given",
                    layout.world_size(),
                    devices.len()
                ),
            ));
        }
        Ok(Self {
            layout,
            devices,
            collectives: CollectivesChoice::Auto,
        })
    }

    /// The plan with its collectives chosen by `choice`.
    pub fn with_collectives(mut self, choice: CollectivesChoice) -> Self {
        self.collectives = choice;
        self
    }

    /// The collectives this plan's runs use, NCCL loaded where chosen
    /// ([`collectives::resolve`]).
    pub fn resolve_collectives(&self) -> Result<Collectives> {
        collectives::resolve(self.collectives, &self.devices)
    }

    /// `ranks` ranks on one `device` in `layout` (the tests' and the overhead benchmark's plan).
    pub fn on_one_device(layout: ParallelLayout, device: Device) -> Self {
        Self {
            devices: vec![device; layout.world_size()],
            layout,
            collectives: CollectivesChoice::Auto,
        }
    }

    /// The distinct devices, in rank order.
    pub fn distinct_devices(&self) -> Vec<Device> {
        let mut seen = Vec::new();
        for d in &self.devices {
            if !seen.contains(d) {
                seen.push(*d);
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_from_the_device_count() {
        let l = |n| ParallelLayout::for_devices(n, 40).unwrap();
        assert_eq!(l(1), ParallelLayout { cfg: 1, ulysses: 1 });
        assert_eq!(l(2), ParallelLayout { cfg: 2, ulysses: 1 });
        assert_eq!(l(4), ParallelLayout { cfg: 2, ulysses: 2 });
        assert_eq!(l(8), ParallelLayout { cfg: 2, ulysses: 4 });
        assert_eq!(l(5), ParallelLayout { cfg: 1, ulysses: 5 });
        let err = ParallelLayout::for_devices(6, 40).unwrap_err().to_string();
        assert!(
            err.contains("Ulysses degree 3") && err.contains("40 attention heads"),
            "{err}"
        );
    }

    #[test]
    fn layout_parses_and_prints_as_cfg_x_ulysses() {
        let l: ParallelLayout = "2x4".parse().unwrap();
        assert_eq!(l, ParallelLayout { cfg: 2, ulysses: 4 });
        assert_eq!(l.to_string(), "2x4");
        assert_eq!(l.coords(5), (1, 1));
        assert!("2x".parse::<ParallelLayout>().is_err());
        assert!("0x2".parse::<ParallelLayout>().is_err());
        assert!(ParallelLayout::new(3, 1, 40).is_err());
    }
}
