//! [`GeneratorThread`]: the generator on its own OS thread (the GPU never blocks the runtime).
//! The async side sends one job at a time and awaits the result, while `/healthz` and Kafka
//! polling stay responsive; a panic in the backend becomes an internal error, not a dead worker.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{GenerateError, Generated, JobSpec, ModelInfo, StepHooks, VideoGenerator};
use crate::job::checkpoints::Checkpoint;

/// Resolves once the generator is built: the model and how long loading took.
pub type Loaded = oneshot::Receiver<Result<(ModelInfo, Duration), GenerateError>>;

struct Work {
    job: JobSpec,
    resume: Option<Checkpoint>,
    hooks: Box<dyn StepHooks + Send>,
    reply: oneshot::Sender<Result<Generated, GenerateError>>,
}

/// The generator on its own thread. Cloneable handle; one job runs at a time.
#[derive(Clone)]
pub struct GeneratorThread {
    tx: mpsc::Sender<Work>,
}

impl GeneratorThread {
    /// Starts the thread and builds the generator there (loading weights may take minutes);
    /// `loaded` resolves with the model info and the load time once it is ready.
    pub fn start<F>(build: F) -> (Self, Loaded)
    where
        F: FnOnce() -> Result<Box<dyn VideoGenerator>, GenerateError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Work>();
        let (loaded_tx, loaded_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("t2v-generator".into())
            .spawn(move || {
                let started = Instant::now();
                let mut generator = match build() {
                    Ok(g) => g,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                let _ = loaded_tx.send(Ok((generator.model(), started.elapsed())));
                while let Ok(mut work) = rx.recv() {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        generator.generate(&work.job, work.resume.as_ref(), &mut *work.hooks)
                    }))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        Err(GenerateError::Internal(format!(
                            "the generator panicked: {what}"
                        )))
                    });
                    let _ = work.reply.send(result);
                }
            })
            .expect("spawning the generator thread");
        (Self { tx }, loaded_rx)
    }

    /// Runs `job` on the generator thread (from `resume` when given). The hooks are dropped
    /// on that thread once the run ended.
    pub async fn generate(
        &self,
        job: JobSpec,
        resume: Option<Checkpoint>,
        hooks: impl StepHooks + Send + 'static,
    ) -> Result<Generated, GenerateError> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send(Work {
                job,
                resume,
                hooks: Box::new(hooks),
                reply,
            })
            .map_err(|_| GenerateError::Internal("the generator thread is gone".into()))?;
        result
            .await
            .map_err(|_| GenerateError::Internal("the generator thread is gone".into()))?
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::*;
    use crate::generate::tests::spec;
    use crate::generate::{StepInfo, SyntheticGenerator};

    #[tokio::test]
    async fn the_thread_reports_steps_and_stops_on_break() {
        let (thread, loaded) = GeneratorThread::start(|| {
            Ok(Box::new(SyntheticGenerator::new("m", Duration::ZERO)) as Box<dyn VideoGenerator>)
        });
        let (info, _) = loaded.await.unwrap().unwrap();
        assert_eq!(info.name, "m");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = thread
            .generate(spec(3), None, move |s: StepInfo| {
                tx.send(s.step).unwrap();
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
        assert_eq!(out.frames.count, 5);
        let mut steps = Vec::new();
        while let Ok(s) = rx.try_recv() {
            steps.push(s);
        }
        assert_eq!(steps, [1, 2, 3, 4]);
        let stopped = thread
            .generate(spec(3), None, |s: StepInfo| {
                if s.step == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await;
        assert_eq!(stopped, Err(GenerateError::Stopped { at_step: 2 }));
    }
}
