//! The rank threads of one parallel run and the predictor that drives them.
//!
//! [`run_ranks`] starts one scoped thread per rank, each owning its handles on the experts
//! ([`RankModels`]) and on its two groups (its CFG pair, its Ulysses group), and hands the
//! caller a [`RankPool`]. The caller's thread keeps running the denoising loop; each noise
//! prediction is one message to every rank and one answer back from each. The threads end when
//! the caller's closure returns.
//!
//! A rank that fails (an error or a panic) aborts its groups, so its peers fail their next
//! collective instead of waiting for it; the step returns the first failure that is not just a
//! peer's ("a peer rank failed"), and the pool refuses every later step.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use tch::{Device, Kind, Tensor};

use crate::denoise::{apply_guidance, Expert, NoisePredictor};
use crate::error::{PipelineError, Result};
use crate::parallel::collectives::Collectives;
use crate::parallel::comm::{Communicator, PEER_FAILED};
use crate::parallel::sequence::SequenceShard;
use crate::parallel::{ParallelLayout, ParallelPlan};
use crate::wan::WanTransformer3DModel;

/// The experts one rank computes with, on its device.
pub struct RankModels {
    pub high: WanTransformer3DModel,
    pub low: Option<WanTransformer3DModel>,
}

impl RankModels {
    /// The experts copied to `device` (a replica for the ranks placed there).
    pub fn replica(&self, device: Device) -> Result<Self> {
        Ok(Self {
            high: self.high.replica(device)?,
            low: self.low.as_ref().map(|l| l.replica(device)).transpose()?,
        })
    }

    /// Other handles on the same weights (see [`WanTransformer3DModel::share`]).
    pub fn share(&self) -> Result<Self> {
        Ok(Self {
            high: self.high.share()?,
            low: self
                .low
                .as_ref()
                .map(WanTransformer3DModel::share)
                .transpose()?,
        })
    }

    /// Handles for every rank of `plan`: ranks on rank 0's device share `home` (wherever its
    /// weights are at the moment: swapped experts stay swappable), the others share the
    /// replica in `replicas` that lives on their device.
    pub fn for_ranks(
        plan: &ParallelPlan,
        home: &RankModels,
        replicas: &[RankModels],
    ) -> Result<Vec<RankModels>> {
        plan.devices
            .iter()
            .map(|&device| {
                if device == plan.devices[0] {
                    return home.share();
                }
                replicas
                    .iter()
                    .find(|r| r.high.device() == device)
                    .ok_or_else(|| {
                        PipelineError::invalid(
                            "parallel plan",
                            format!("no copy of the experts on {device:?}"),
                        )
                    })?
                    .share()
            })
            .collect()
    }
}

/// What every rank needs for one noise prediction (handles on the caller's tensors).
struct StepJob {
    expert: Expert,
    latents: Tensor,
    timestep: Tensor,
    prompt: Tensor,
    negative: Option<Tensor>,
    guidance: f64,
}

impl StepJob {
    fn share(&self) -> Self {
        Self {
            expert: self.expert,
            latents: self.latents.shallow_clone(),
            timestep: self.timestep.shallow_clone(),
            prompt: self.prompt.shallow_clone(),
            negative: self.negative.as_ref().map(Tensor::shallow_clone),
            guidance: self.guidance,
        }
    }
}

/// One rank's answer to a step: rank 0's prediction, nothing from the others.
type RankAnswer = (usize, Result<Option<Tensor>>);

/// The caller's side of the rank threads: a [`NoisePredictor`] per expert through
/// [`Self::expert`].
pub struct RankPool {
    jobs: Vec<mpsc::Sender<StepJob>>,
    answers: mpsc::Receiver<RankAnswer>,
    layout: ParallelLayout,
    dtype: Kind,
    device: Device,
    /// The failure that broke the pool; every later step reports it.
    failed: RefCell<Option<String>>,
}

/// Runs `body` with the rank threads of `plan` started, one per entry of `models` (rank `r`
/// computes with `models[r]`, on `plan.devices[r]`), and stops them when it returns.
pub fn run_ranks<R>(
    plan: &ParallelPlan,
    models: Vec<RankModels>,
    body: impl FnOnce(&RankPool) -> R,
) -> Result<R> {
    let layout = plan.layout;
    if models.len() != layout.world_size() {
        return Err(PipelineError::invalid(
            "parallel plan",
            format!(
                "{} ranks, {} model handles",
                layout.world_size(),
                models.len()
            ),
        ));
    }
    layout.check(models[0].high.config().num_attention_heads)?;
    let dtype = models[0].high.kind();
    let groups = rank_groups(plan, &plan.resolve_collectives()?)?;
    std::thread::scope(|scope| {
        let (answer_tx, answers) = mpsc::channel();
        let mut jobs = Vec::with_capacity(models.len());
        for (index, (models, (sequence, cfg))) in models.into_iter().zip(groups).enumerate() {
            let (job_tx, job_rx) = mpsc::channel();
            jobs.push(job_tx);
            let rank = Rank {
                index,
                layout,
                models,
                sequence,
                cfg,
            };
            let answer_tx = answer_tx.clone();
            std::thread::Builder::new()
                .name(format!("t2v-rank-{index}"))
                .spawn_scoped(scope, move || rank.serve(job_rx, answer_tx))
                .map_err(|e| PipelineError::Collective {
                    message: format!("cannot start the thread of rank {index}: {e}"),
                })?;
        }
        let pool = RankPool {
            jobs,
            answers,
            layout,
            dtype,
            device: plan.devices[0],
            failed: RefCell::new(None),
        };
        // Dropping the pool closes the job channels: the rank threads leave their loops and
        // the scope joins them.
        Ok(body(&pool))
    })
}

/// One rank's handle on a group.
type Group = Box<dyn Communicator>;

/// The collectives of `plan`'s runs, with NCCL's communicators for every group created now
/// and kept for the first run: a worker calls it at load, so NCCL that cannot start fails the
/// load rather than the first job, and that job does not wait for the communicators.
pub fn prepare_collectives(plan: &ParallelPlan) -> Result<Collectives> {
    let collectives = plan.resolve_collectives()?;
    if matches!(collectives, Collectives::Nccl { .. }) {
        // Dropped without an abort, the handles leave their communicators for the next run.
        drop(rank_groups(plan, &collectives)?);
    }
    Ok(collectives)
}

/// Every rank's (Ulysses group, CFG group) handles, through `collectives`.
fn rank_groups(plan: &ParallelPlan, collectives: &Collectives) -> Result<Vec<(Group, Group)>> {
    let layout = plan.layout;
    let world = layout.world_size();
    let mut sequence: Vec<Option<Group>> = (0..world).map(|_| None).collect();
    let mut cfg: Vec<Option<Group>> = (0..world).map(|_| None).collect();
    let place = |slots: &mut Vec<Option<Group>>, ranks: Vec<usize>| -> Result<()> {
        let devices: Vec<Device> = ranks.iter().map(|&r| plan.devices[r]).collect();
        for (r, g) in ranks.into_iter().zip(collectives.group(&devices)?) {
            slots[r] = Some(g);
        }
        Ok(())
    };
    for c in 0..layout.cfg {
        place(
            &mut sequence,
            (0..layout.ulysses)
                .map(|u| c * layout.ulysses + u)
                .collect(),
        )?;
    }
    for u in 0..layout.ulysses {
        place(
            &mut cfg,
            (0..layout.cfg).map(|c| c * layout.ulysses + u).collect(),
        )?;
    }
    Ok(sequence
        .into_iter()
        .zip(cfg)
        .filter_map(|(s, c)| Some((s?, c?)))
        .collect())
}

impl RankPool {
    pub fn layout(&self) -> ParallelLayout {
        self.layout
    }

    /// The predictor of `expert` over the ranks. `prepare` runs on the caller's thread before
    /// each step (e.g. to fetch a swapped-out expert onto the device the ranks share).
    pub fn expert<'a>(
        &'a self,
        expert: Expert,
        prepare: Option<&'a dyn Fn() -> Result<()>>,
    ) -> PoolExpert<'a> {
        PoolExpert {
            pool: self,
            expert,
            prepare,
        }
    }

    /// Sends `job` to every rank and waits for all of them; rank 0's prediction, on rank 0's
    /// device.
    fn run_step(&self, job: StepJob) -> Result<Tensor> {
        if let Some(reason) = self.failed.borrow().as_ref() {
            return Err(PipelineError::Collective {
                message: format!("an earlier step failed: {reason}"),
            });
        }
        let outcome = self.exchange(job);
        if let Err(e) = &outcome {
            *self.failed.borrow_mut() = Some(e.to_string());
        }
        outcome
    }

    fn exchange(&self, job: StepJob) -> Result<Tensor> {
        let gone = |rank: usize| PipelineError::Collective {
            message: format!("the thread of rank {rank} is gone"),
        };
        for (rank, tx) in self.jobs.iter().enumerate() {
            tx.send(job.share()).map_err(|_| gone(rank))?;
        }
        let mut prediction = None;
        let mut failure: Option<PipelineError> = None;
        for _ in 0..self.jobs.len() {
            let (rank, answer) = self.answers.recv().map_err(|_| gone(0))?;
            match answer {
                Ok(Some(t)) if rank == 0 => prediction = Some(t),
                Ok(_) => {}
                // The first cause wins over the peers that failed because of it.
                Err(e) => {
                    let replaces = match &failure {
                        None => true,
                        Some(earlier) => is_echo(earlier) && !is_echo(&e),
                    };
                    if replaces {
                        failure = Some(e);
                    }
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        prediction.ok_or_else(|| PipelineError::Collective {
            message: "rank 0 returned no prediction".into(),
        })
    }
}

/// One expert as the denoising loop sees it, computed by the ranks of a [`RankPool`].
pub struct PoolExpert<'a> {
    pool: &'a RankPool,
    expert: Expert,
    prepare: Option<&'a dyn Fn() -> Result<()>>,
}

impl NoisePredictor for PoolExpert<'_> {
    fn dtype(&self) -> Kind {
        self.pool.dtype
    }

    fn predict(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor> {
        self.predict_guided(latents, timestep, text, None, 1.0)
    }

    fn predict_guided(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        prompt: &Tensor,
        negative: Option<&Tensor>,
        guidance: f64,
    ) -> Result<Tensor> {
        if let Some(prepare) = self.prepare {
            prepare()?;
        }
        let prediction = self.pool.run_step(StepJob {
            expert: self.expert,
            latents: latents.shallow_clone(),
            timestep: timestep.shallow_clone(),
            prompt: prompt.shallow_clone(),
            negative: negative.map(Tensor::shallow_clone),
            guidance,
        })?;
        Ok(prediction.f_to_device(self.pool.device)?)
    }
}

/// One rank: its index, its experts, its groups.
struct Rank {
    index: usize,
    layout: ParallelLayout,
    models: RankModels,
    sequence: Group,
    cfg: Group,
}

impl Rank {
    /// Answers steps until the pool closes the job channel.
    fn serve(self, jobs: mpsc::Receiver<StepJob>, answers: mpsc::Sender<RankAnswer>) {
        // Grad mode is per thread: the caller's no_grad does not reach this one.
        let _no_grad = tch::no_grad_guard();
        while let Ok(job) = jobs.recv() {
            let answer = catch_unwind(AssertUnwindSafe(|| self.step(&job)))
                .unwrap_or_else(|panic| Err(panic_error(self.index, panic.as_ref())));
            if let Err(e) = &answer {
                let reason = format!("rank {}: {e}", self.index);
                self.sequence.abort(&reason);
                self.cfg.abort(&reason);
            }
            if answers.send((self.index, answer)).is_err() {
                break;
            }
        }
    }

    /// This rank's part of one step; rank 0 returns the guided prediction `[B, C, F, H, W]`.
    fn step(&self, job: &StepJob) -> Result<Option<Tensor>> {
        let (cfg_rank, _) = self.layout.coords(self.index);
        let model = match job.expert {
            Expert::High => &self.models.high,
            Expert::Low => self.models.low.as_ref().unwrap_or(&self.models.high),
        };
        // Without guidance the second CFG group has nothing to do.
        if cfg_rank > 0 && job.negative.is_none() {
            return Ok(None);
        }
        // 1. this rank's token shard of the prediction(s), guided where the pair meets
        let grid = model.token_grid(&job.latents)?;
        let sequence = SequenceShard::new(&*self.sequence, grid.iter().product());
        let forward = |text: &Tensor| {
            model.forward_tokens(&job.latents, &job.timestep, text, Some(&sequence))
        };
        let guided = match &job.negative {
            None => forward(&job.prompt)?,
            Some(negative) if self.layout.cfg == 1 => {
                let cond = forward(&job.prompt)?;
                let uncond = forward(negative)?;
                apply_guidance(&cond, &uncond, job.guidance)?
            }
            Some(negative) => {
                let text = if cfg_rank == 0 { &job.prompt } else { negative };
                let mine = forward(text)?;
                let pair = self.cfg.all_gather(&mine)?;
                apply_guidance(&pair[0], &pair[1], job.guidance)?
            }
        };
        // 2. CFG group 0 gathers its shards; rank 0 unpatchifies the whole prediction
        if cfg_rank > 0 {
            return Ok(None);
        }
        let tokens = sequence.gather_tokens(&guided)?;
        if self.index != 0 {
            return Ok(None);
        }
        let batch = job.latents.size()[0];
        Ok(Some(model.unpatchify(&tokens, batch, grid)?))
    }
}

/// Whether `e` only reports that another rank failed first.
fn is_echo(e: &PipelineError) -> bool {
    matches!(e, PipelineError::Collective { message } if message.starts_with(PEER_FAILED))
}

/// A rank's panic as an error (the payload of `panic!` is a `&str` or a `String`).
fn panic_error(rank: usize, payload: &(dyn std::any::Any + Send)) -> PipelineError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    PipelineError::Collective {
        message: format!("rank {rank} panicked: {what}"),
    }
}
