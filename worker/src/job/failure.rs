//! How a job that ends early is classified, and what each class publishes:
//!
//! | class | event | retried | DLQ copy |
//! |---|---|---|---|
//! | [`Failure::invalid_input`] — the request can never run | Failed | no | yes |
//! | [`Failure::poison`] — the job keeps crashing workers, or its stored state is unreadable | Failed | no | yes |
//! | [`Failure::refused`] — not for this fleet now (model, deadline, memory) | Failed | no | no |
//! | [`Failure::internal`] — a fault on our side another run may not hit | Failed (retryable) | by the client | no |
//! | [`Stop::StorageDown`] — object storage down after in-place retries | none | re-queued with attempt + 1 | no |
//! | [`Stop::Kafka`] — Kafka did not acknowledge | none | the record is read again | no |
//! | [`Stop::Canceled`] | Canceled | no | no |
//! | [`Stop::Interrupted`] — shutdown or the partition moved | none | the next owner resumes | no |
//! | [`Stop::WorkerSick`] — a stuck GPU call or encoder, or `max_consecutive_failures` internal failures in a row | none | re-queued under the same attempt (its marker counts); the worker exits | after `max_attempts` such runs |
//!
//! In-place retries with backoff (storage, Kafka sends) happen below this, in [`crate::retry`].

use rdkafka::error::KafkaError;
use t2v_contract::validate::{self, truncate_reason, MAX_REASON_BYTES};
use t2v_proto::v1::{generation_event::Kind, Canceled, ErrorCode, Failed};

use super::lifecycle::Job;
use super::Disposition;
use crate::generate::GenerateError;
use crate::metrics::outcome;
use crate::storage::StorageError;

/// A Failed event to publish, and whether the request also goes to the DLQ.
#[derive(Debug)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    /// Said in the Failed event: the client may submit the same request again.
    pub retryable: bool,
    pub dead_letter: bool,
}

impl Failure {
    /// The request breaks its documented bounds or the model's limits: never retried; a copy
    /// goes to the DLQ.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message, false, true)
    }

    /// The job cannot be run without a person looking at it (it kept crashing workers, or its
    /// stored state is unreadable): never retried; a copy goes to the DLQ.
    pub fn poison(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(code, message, false, true)
    }

    /// A valid request this fleet will not run (another model, a passed deadline, settings that
    /// do not fit in memory): final, no DLQ copy.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(code, message, false, false)
    }

    /// The job id already names a committed job of another request: never retried, and the
    /// request goes to the DLQ (nothing the client sent is lost).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::JobIdConflict, message, false, true)
    }

    /// A fault on our side (model load, encoder, a bug): the event says retryable.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message, true, false)
    }

    fn new(
        code: ErrorCode,
        message: impl Into<String>,
        retryable: bool,
        dead_letter: bool,
    ) -> Self {
        Self {
            code,
            // A reason quotes the input at times: keep events and DLQ headers small.
            message: truncate_reason(&message.into(), MAX_REASON_BYTES),
            retryable,
            dead_letter,
        }
    }
}

/// A job ended early with this terminal event (or without one, for `Interrupted`, `StorageDown`
/// and `Kafka`).
pub enum Stop {
    Failed(Failure),
    Canceled {
        reason: String,
        at_step: u32,
    },
    Interrupted,
    /// The worker, not the job, looks broken: the job is re-queued under the same attempt for a
    /// healthy worker (its attempt marker stays and counts, so a job that makes every worker sick
    /// ends in the DLQ after `max_attempts` runs).
    WorkerSick(String),
    StorageDown(StorageError),
    Kafka(KafkaError),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Failed(f)
    }
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Self {
        Stop::StorageDown(e)
    }
}

impl From<KafkaError> for Stop {
    fn from(e: KafkaError) -> Self {
        Stop::Kafka(e)
    }
}

/// A generator's error as a failure (`Stopped` is the caller's: cancel or interruption).
pub fn generate_failure(e: GenerateError) -> Failure {
    match e {
        GenerateError::OutOfMemory { message } => {
            Failure::refused(ErrorCode::ResourceExhausted, message)
        }
        GenerateError::InvalidInput(message) => Failure::invalid_input(message),
        e @ (GenerateError::Load(_)
        | GenerateError::Internal(_)
        | GenerateError::Stopped { .. }) => Failure::internal(e.to_string()),
    }
}

/// What a finished stop did: the offset's fate, the outcome label and a detail for the log.
type Finished = (Disposition, &'static str, String);

impl Job<'_> {
    /// Turns an early stop into its terminal event, DLQ copy or re-queue.
    pub(super) async fn finish_stop(&self, stop: Stop) -> Finished {
        let stop = self.sick_after_repeated_failures(stop);
        let (sent, label, detail) = match stop {
            Stop::Failed(failure) => self.finish_failed(failure).await,
            Stop::WorkerSick(reason) => {
                self.ctx.health.mark_sick(&reason);
                self.requeue_same_attempt(&reason).await
            }
            Stop::Canceled { reason, at_step } => {
                let detail = format!("CANCELED at step {at_step}: {reason}");
                let sent = self.emit(Kind::Canceled(Canceled { reason, at_step })).await;
                (sent, outcome::CANCELED, detail)
            }
            Stop::Interrupted => {
                return (
                    Disposition::Interrupted,
                    outcome::INTERRUPTED,
                    format!(
                        "interrupted after step {} (shutdown, or the partition moved to another worker)",
                        self.at_step
                    ),
                )
            }
            Stop::StorageDown(e) => self.finish_storage_down(e).await,
            Stop::Kafka(e) => (Err(e), outcome::FAILED, String::new()),
        };
        match sent {
            Ok(()) => (Disposition::Done, label, detail),
            Err(e) if crate::retry::is_transient_kafka(&e) => {
                tracing::error!(error = %e, "Kafka did not acknowledge; the record will be read again");
                (
                    Disposition::Redeliver,
                    outcome::FAILED,
                    format!("Kafka unavailable: {e}"),
                )
            }
            Err(e) => self.refused_by_kafka(e).await,
        }
    }

    /// Kafka refused what this record led to for good (too large, no such topic, not
    /// authorised): reading the record again would loop. Its bytes go to the DLQ and its offset
    /// is stored; when even the DLQ refuses them, the offset is stored all the same, loudly.
    async fn refused_by_kafka(&self, e: KafkaError) -> Finished {
        let reason = truncate_reason(
            &format!(
                "Kafka refused this record's result for good ({e}); the request is here untouched"
            ),
            MAX_REASON_BYTES,
        );
        match self
            .ctx
            .publisher
            .dead_letter(self.record, &reason, self.req.attempt)
            .await
        {
            Ok(()) => (Disposition::Done, outcome::FAILED, reason),
            Err(dlq) if crate::retry::is_transient_kafka(&dlq) => (
                Disposition::Redeliver,
                outcome::FAILED,
                format!("Kafka unavailable: {dlq}"),
            ),
            Err(dlq) => {
                tracing::error!(error = %e, dlq_error = %dlq, partition = self.record.partition, offset = self.record.offset, "the DLQ refused the record too: skipping it so the partition moves on");
                (
                    Disposition::Done,
                    outcome::DROPPED,
                    format!("dropped: {dlq}"),
                )
            }
        }
    }

    async fn finish_failed(&self, f: Failure) -> (Result<(), KafkaError>, &'static str, String) {
        let code = f.code.as_str_name();
        let sent = async {
            if f.dead_letter {
                let reason = format!("{code}: {}", f.message);
                self.ctx
                    .publisher
                    .dead_letter(self.record, &reason, self.req.attempt)
                    .await?;
            }
            let failed = Kind::Failed(Failed {
                code: f.code as i32,
                message: f.message.clone(),
                retryable: f.retryable,
            });
            match self.event_id() {
                Some(_) => self.emit(failed).await,
                // No valid job id to key a Failed by: the DLQ copy is the answer.
                None => Ok(()),
            }
        }
        .await;
        if sent.is_ok() {
            // Failed is final for this job id: its checkpoints would only cost storage.
            self.delete_checkpoints().await;
        }
        tracing::warn!(code, message = f.message, "job failed");
        (sent, outcome::FAILED, code.to_string())
    }

    /// An internal failure counts towards `max_consecutive_failures`; the one that reaches it
    /// means the worker is sick, not the job.
    fn sick_after_repeated_failures(&self, stop: Stop) -> Stop {
        let limit = self.ctx.cfg.jobs.max_consecutive_failures;
        match stop {
            Stop::Failed(f) if f.code == ErrorCode::Internal => {
                let in_a_row = self
                    .ctx
                    .internal_failures_in_a_row
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                if limit > 0 && in_a_row >= limit {
                    Stop::WorkerSick(format!(
                        "{in_a_row} jobs in a row failed with internal errors (limit jobs.max_consecutive_failures = {limit}); the last: {}",
                        f.message
                    ))
                } else {
                    Stop::Failed(f)
                }
            }
            other => other,
        }
    }

    /// Storage stayed down through the in-place retries: re-queue the request.
    async fn finish_storage_down(
        &self,
        e: StorageError,
    ) -> (Result<(), KafkaError>, &'static str, String) {
        tracing::warn!(error = %e, "object store unavailable after retries");
        self.requeue(&e.to_string()).await
    }

    /// Publishes the request again under the same attempt number, for a healthy worker: the
    /// attempt marker this run left counts (markers are counted per attempt), so a job that makes
    /// every worker sick reaches `max_attempts` and ends in the DLQ instead of circling.
    async fn requeue_same_attempt(
        &self,
        why: &str,
    ) -> (Result<(), KafkaError>, &'static str, String) {
        let sent = self
            .ctx
            .publisher
            .requeue(&self.record.topic, &self.req, &self.trace)
            .await;
        let detail = format!("re-queued as attempt {}: {why}", self.req.attempt);
        (sent, outcome::REQUEUED, detail)
    }

    /// Publishes the request again with attempt + 1 for another try, its crash budget afresh (at
    /// the attempt bound, a retryable Failed UNAVAILABLE instead).
    async fn requeue(&self, why: &str) -> (Result<(), KafkaError>, &'static str, String) {
        if self.req.attempt < validate::MAX_ATTEMPT {
            let mut again = self.req.clone();
            again.attempt += 1;
            let sent = self
                .ctx
                .publisher
                .requeue(&self.record.topic, &again, &self.trace)
                .await;
            let detail = format!("re-queued as attempt {}: {why}", again.attempt);
            return (sent, outcome::REQUEUED, detail);
        }
        let sent = self
            .emit(Kind::Failed(Failed {
                code: ErrorCode::Unavailable as i32,
                message: truncate_reason(why, MAX_REASON_BYTES),
                retryable: true,
            }))
            .await;
        (sent, outcome::FAILED, "ERROR_CODE_UNAVAILABLE".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_says_what_is_retried_and_what_goes_to_the_dlq() {
        let bad = Failure::invalid_input("x");
        assert_eq!(
            (bad.code, bad.retryable, bad.dead_letter),
            (ErrorCode::InvalidArgument, false, true)
        );
        let poison = Failure::poison(ErrorCode::AttemptsExhausted, "x");
        assert_eq!((poison.retryable, poison.dead_letter), (false, true));
        let refused = Failure::refused(ErrorCode::ModelNotFound, "x");
        assert_eq!((refused.retryable, refused.dead_letter), (false, false));
        let internal = Failure::internal("x");
        assert_eq!(
            (internal.code, internal.retryable, internal.dead_letter),
            (ErrorCode::Internal, true, false)
        );
        let oom = generate_failure(GenerateError::OutOfMemory {
            message: "m".into(),
        });
        assert_eq!(
            (oom.code, oom.dead_letter),
            (ErrorCode::ResourceExhausted, false)
        );
        let invalid = generate_failure(GenerateError::InvalidInput("m".into()));
        assert_eq!(
            (invalid.code, invalid.dead_letter),
            (ErrorCode::InvalidArgument, true)
        );
        let load = generate_failure(GenerateError::Load("m".into()));
        assert_eq!((load.code, load.retryable), (ErrorCode::Internal, true));
    }
}
