//! `t2v`: submit text-to-video jobs, watch their events, cancel them, manage the topics.
//!
//! Exit codes: 0 ok · 2 invalid input, including a refused Kafka property (nothing produced) ·
//! 3 brokers unreachable or topic missing · 4 the job failed · 5 the job was canceled ·
//! 6 --wait timed out · 1 anything else (e.g. records the brokers did not acknowledge).
//! `--help` shows the same list ([`EXIT_CODES`]), `t2v cancel --help` its own.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use t2v_contract::headers::schema;
use t2v_contract::validate;
use t2v_producer::properties;
use t2v_producer::topics::{self, Outcome};
use t2v_producer::{
    json, InvalidRequest, JobWatch, Routes, StartAt, SubmitError, Submitter, SubmitterConfig,
    Terminal,
};
use t2v_proto::v1::{generation_event::Kind, GenerationEvent, GenerationRequest, Sampler};

/// Flag help built from t2v-contract's bounds and defaults, so `--help` cannot drift from them.
mod help {
    use t2v_contract::defaults::WAN22_T2V_A14B as D;
    use t2v_contract::validate::*;

    pub fn size() -> String {
        format!("WIDTHxHEIGHT in pixels, each {MIN_SIDE}..={MAX_SIDE} and a multiple of {SIDE_MULTIPLE} (default: the model's, {}x{})", D.width, D.height)
    }
    pub fn frames() -> String {
        format!(
            "Number of frames, 1..={MAX_FRAMES} with frames % 4 == 1 (default: the model's, {})",
            D.num_frames
        )
    }
    pub fn fps() -> String {
        format!(
            "Frames per second of the MP4, 1..={MAX_FPS} (default: the model's, {})",
            D.fps
        )
    }
    pub fn steps() -> String {
        format!(
            "Denoising steps, 1..={MAX_STEPS} (default: the model's, {})",
            D.steps
        )
    }
    pub fn guidance() -> String {
        format!("Guidance scale (high-noise expert), 0..={MAX_GUIDANCE}; 1 or less turns guidance off (default: the model's, {})", D.guidance_scale)
    }
    pub fn guidance_2() -> String {
        format!("Guidance scale of the low-noise expert, 0..={MAX_GUIDANCE} (default: the model's, {}; --guidance alone sets both)", D.guidance_scale_2)
    }
    pub fn shift() -> String {
        format!(
            "Flow shift, {}..={} (default: the scheduler config's)",
            SHIFT_RANGE.0, SHIFT_RANGE.1
        )
    }
    pub fn priority() -> String {
        format!("Priority lane, 0..={MAX_PRIORITY}: 7-9 high, 1-3 batch, 0 (default) and 4-6 normal (schemas/topics.yaml `lanes`); a worker starts its highest waiting lane first")
    }
}

/// Kafka properties, shown by `--help`.
const KAFKA_PROPERTIES_HELP: &str = "\
Kafka properties (SASL, TLS, any librdkafka setting), lowest precedence first:
  1. --kafka-properties-file PATH (env T2V_KAFKA_PROPERTIES_FILE): librdkafka KEY=VALUE lines;
     blank lines and lines starting with # are skipped
  2. env T2V_KAFKA_PROPERTY_<KEY>: the key upper-cased with each '.' written as '__', e.g.
     T2V_KAFKA_PROPERTY_SASL__USERNAME and T2V_KAFKA_PROPERTY_SASL__PASSWORD set
     sasl.username and sasl.password
  3. --kafka-property KEY=VALUE: command lines are visible to other users (ps), keep secrets
     out of them
Values of secret properties (passwords, keys, tokens, JAAS configs) are never printed.";

/// Exit codes of every command, shown by `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  anything else, e.g. records the brokers did not acknowledge
  2  invalid input, including a Kafka property librdkafka refuses; nothing was produced
  3  brokers unreachable within --connect-timeout-secs, or a topic missing
  4  submit --wait: the job failed
  5  submit --wait: the job was canceled
  6  submit --wait: no terminal event within --wait-timeout-secs";

/// Exit codes of `t2v cancel`, shown by `t2v cancel --help`.
const CANCEL_EXIT_CODES: &str = "\
Exit codes:
  0  the brokers acknowledged the cancel; workers honour it before the job starts or at its
     next denoising step
  1  anything else, e.g. the brokers did not acknowledge the cancel in time
  2  invalid input: a malformed job id or a Kafka property librdkafka refuses; nothing was sent
  3  brokers unreachable within --connect-timeout-secs, or the control topic missing";

#[derive(Parser)]
#[command(
    name = "t2v",
    version,
    about = "Submit text-to-video jobs to a t2v-fleet and follow them",
    after_help = format!("{KAFKA_PROPERTIES_HELP}\n\n{EXIT_CODES}")
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(
        long,
        global = true,
        env = "T2V_BROKERS",
        default_value = "localhost:9092"
    )]
    brokers: String,
    /// Send every request to this one topic, without routing by model and priority (a fleet
    /// with one lane). Default: route by --routes.
    #[arg(long, global = true, env = "T2V_REQUESTS_TOPIC")]
    requests_topic: Option<String>,
    /// Topics file whose `lanes` and `models` route each request to the topic of its model and
    /// priority lane; a model no fleet serves is refused (exit 2) naming the served ones.
    /// Default: the schemas/topics.yaml built into t2v.
    #[arg(long, global = true, env = "T2V_ROUTES", value_name = "FILE")]
    routes: Option<PathBuf>,
    /// Topic of job events.
    #[arg(
        long,
        global = true,
        env = "T2V_EVENTS_TOPIC",
        default_value = "t2v.events.v1"
    )]
    events_topic: String,
    /// Topic of control commands (cancel).
    #[arg(
        long,
        global = true,
        env = "T2V_CONTROL_TOPIC",
        default_value = "t2v.control.v1"
    )]
    control_topic: String,
    /// Seconds to wait for the brokers before failing with exit code 3.
    #[arg(
        long,
        global = true,
        env = "T2V_CONNECT_TIMEOUT_SECS",
        default_value_t = 10
    )]
    connect_timeout_secs: u64,
    /// Extra librdkafka property, KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL;
    /// overrides the file and T2V_KAFKA_PROPERTY_* (keep secrets in those: see below).
    #[arg(long = "kafka-property", global = true, value_name = "KEY=VALUE")]
    kafka_properties: Vec<String>,
    /// File of librdkafka KEY=VALUE lines (# comments), e.g. SASL credentials; the lowest
    /// precedence of the Kafka properties.
    #[arg(
        long,
        global = true,
        env = "T2V_KAFKA_PROPERTIES_FILE",
        value_name = "PATH"
    )]
    kafka_properties_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a prompt (or a JSON-lines batch) as generation requests.
    Submit(Box<SubmitArgs>),
    /// Print job events as JSON lines.
    Watch {
        /// Only this job's events.
        #[arg(long = "job")]
        job_id: Option<String>,
        /// Start from the oldest retained event instead of now.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this job's terminal event (needs --job).
        #[arg(long, requires = "job_id")]
        until_done: bool,
    },
    /// Ask the fleet to cancel a job (honoured before it starts and between denoising steps).
    #[command(after_help = CANCEL_EXIT_CODES)]
    Cancel {
        job_id: String,
        #[arg(long, default_value = "canceled by user")]
        reason: String,
    },
    /// Manage the topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the topics of schemas/topics.yaml, or check and align existing ones. Idempotent.
    Apply {
        #[arg(long, default_value = "schemas/topics.yaml")]
        file: PathBuf,
        /// Replication factor for every topic (overrides the file; use 3 in production).
        #[arg(long)]
        replication_factor: Option<i32>,
    },
}

#[derive(Args)]
struct SubmitArgs {
    /// The prompt. Omit with --batch.
    #[arg(required_unless_present = "batch", conflicts_with = "batch")]
    prompt: Option<String>,
    /// JSON-lines file of requests in the protobuf JSON form (one GenerationRequest per line;
    /// see schemas/generation_request.schema.json). Every line is validated before anything is
    /// sent. A line without a jobId gets a stable one, `b-` and 32 hex digits of the SHA-256 of
    /// its line number and text, so sending the file again (say after a delivery error) repeats
    /// the same ids and the fleet renders each line once; give jobIds to render a line twice.
    /// Each acknowledged line is printed, each failed one named, even when some fail.
    #[arg(long)]
    batch: Option<PathBuf>,
    /// Model id the fleet serves.
    #[arg(long, env = "T2V_MODEL", default_value = "wan2.2-t2v-a14b")]
    model: String,
    /// Idempotency key; a ULID is assigned when omitted.
    #[arg(long)]
    job_id: Option<String>,
    #[arg(long)]
    negative_prompt: Option<String>,
    #[arg(long, value_name = "WxH", help = help::size())]
    size: Option<String>,
    #[arg(long, help = help::frames())]
    frames: Option<u32>,
    #[arg(long, help = help::fps())]
    fps: Option<u32>,
    #[arg(long, help = help::steps())]
    steps: Option<u32>,
    #[arg(long, help = help::guidance())]
    guidance: Option<f32>,
    #[arg(long, help = help::guidance_2())]
    guidance_2: Option<f32>,
    #[arg(long, help = help::shift())]
    shift: Option<f32>,
    /// unipc or euler (default: the model's, unipc).
    #[arg(long)]
    sampler: Option<String>,
    /// Seed for the initial noise (default: the worker picks one and reports it).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 0, help = help::priority())]
    priority: u32,
    /// KEY=VALUE labels copied to the events and manifest (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Wait for the job to finish, with a progress bar, then print the artifact URIs.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds (exit code 6).
    #[arg(long, default_value_t = 3600)]
    wait_timeout_secs: u64,
    /// The image the video starts from (image-to-video models), PNG, JPEG or WebP: a URI the
    /// fleet's workers read with their own credentials (s3://bucket/key, gs://…, az://…,
    /// file:///path; it must lie under their storage.image_uri_prefixes), or a local file. A
    /// file of at most 48 KiB goes inline in the request; a larger one is uploaded to
    /// --image-store and sent as its URI, else refused (exit 2).
    #[arg(long, value_name = "PATH|URI", conflicts_with = "batch")]
    image: Option<String>,
    /// Where a local --image larger than 48 KiB is uploaded: s3://bucket/prefix, gs://…,
    /// az://container/prefix or file:///dir — a place the workers may read. The object is
    /// named by the SHA-256 of the file, so submitting the same file again uploads nothing new.
    /// Credentials and endpoint from the environment (AWS_*, GOOGLE_*, AZURE_*).
    #[arg(long, env = "T2V_IMAGE_STORE", value_name = "URL", requires = "image")]
    image_store: Option<String>,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<SubmitError> for Failure {
    fn from(e: SubmitError) -> Self {
        let code = match e {
            SubmitError::Invalid(_)
            | SubmitError::Kafka(
                rdkafka::error::KafkaError::ClientConfig(..)
                | rdkafka::error::KafkaError::ClientCreation(_),
            ) => 2,
            SubmitError::BrokersUnreachable { .. } | SubmitError::TopicMissing { .. } => 3,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<InvalidRequest> for Failure {
    fn from(e: InvalidRequest) -> Self {
        Failure {
            code: 2,
            message: e.to_string(),
        }
    }
}

/// A bad --image or --image-store is exit 2 (nothing sent); a failed upload exit 1.
fn image_failure(e: t2v_producer::image::ImageError) -> Failure {
    let code = match e {
        t2v_producer::image::ImageError::Invalid(_) => 2,
        t2v_producer::image::ImageError::Upload { .. } => 1,
    };
    fail(code, e.to_string())
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("T2V_LOG").unwrap_or_else(|_| {
                // librdkafka logs every failed connection attempt; the CLI reports the outcome in one line instead.
                "warn,librdkafka=off,rdkafka::client=off".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("t2v: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Splits a `KEY=VALUE` flag.
fn key_value(item: &str) -> Option<(String, String)> {
    let (k, v) = item.split_once('=')?;
    Some((k.to_string(), v.to_string()))
}

/// The extra librdkafka properties: the file, then the environment, then the flags, each
/// overriding the one before. Error messages name keys and lines, never values.
fn kafka_properties(args: &KafkaArgs) -> Result<BTreeMap<String, String>, Failure> {
    let mut kafka = BTreeMap::new();
    if let Some(path) = &args.kafka_properties_file {
        kafka.extend(properties::read_file(path).map_err(|e| fail(2, e.to_string()))?);
    }
    kafka.extend(properties::from_env(std::env::vars()).map_err(|e| fail(2, e.to_string()))?);
    for prop in &args.kafka_properties {
        let (key, value) = key_value(prop).ok_or_else(|| {
            fail(
                2,
                format!("invalid --kafka-property {prop:?}: expected KEY=VALUE"),
            )
        })?;
        kafka.insert(key, value);
    }
    Ok(kafka)
}

fn submitter_config(args: &KafkaArgs) -> Result<SubmitterConfig, Failure> {
    let kafka = kafka_properties(args)?;
    let timeout = Duration::from_secs(args.connect_timeout_secs.max(1));
    let routes = match (&args.requests_topic, &args.routes) {
        (Some(_), _) => None,
        (None, None) => Some(Routes::builtin()),
        (None, Some(file)) => Some(
            Routes::from_file(file)
                .map_err(|e| fail(2, format!("--routes: {e}")))?
                .ok_or_else(|| {
                    fail(
                        2,
                        format!(
                            "--routes {}: the file has no lanes and models",
                            file.display()
                        ),
                    )
                })?,
        ),
    };
    let defaults = SubmitterConfig::default();
    Ok(SubmitterConfig {
        brokers: args.brokers.clone(),
        requests_topic: args
            .requests_topic
            .clone()
            .unwrap_or(defaults.requests_topic),
        routes,
        events_topic: args.events_topic.clone(),
        control_topic: args.control_topic.clone(),
        connect_timeout: timeout,
        delivery_timeout: timeout.max(Duration::from_secs(10)),
        kafka,
        ..Default::default()
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let cfg = submitter_config(&cli.kafka)?;
    match cli.command {
        Command::Submit(args) => submit(cfg, *args).await,
        Command::Watch {
            job_id,
            from_beginning,
            until_done,
        } => watch(cfg, job_id, from_beginning, until_done).await,
        Command::Cancel { job_id, reason } => {
            // Exit codes: CANCEL_EXIT_CODES. Invalid input first, then the brokers and the
            // topic, so that neither waits out the delivery timeout.
            validate::job_id(&job_id)?;
            let submitter = Submitter::new(cfg)?;
            let control_topic = submitter.config().control_topic.clone();
            submitter.check_topic(&control_topic).await?;
            submitter.cancel(&job_id, &reason).await?;
            println!("cancel requested for {job_id}");
            Ok(())
        }
        Command::Topics {
            command:
                TopicsCommand::Apply {
                    file,
                    replication_factor,
                },
        } => topics_apply(cfg, &file, replication_factor).await,
    }
}

/// `t2v watch`: prints events as JSON lines, forever or until the job's terminal event.
async fn watch(
    cfg: SubmitterConfig,
    job_id: Option<String>,
    from_beginning: bool,
    until_done: bool,
) -> Result<(), Failure> {
    if let Some(id) = &job_id {
        validate::job_id(id)?;
    }
    let start = if from_beginning {
        StartAt::Beginning
    } else {
        StartAt::Now
    };
    let mut events = JobWatch::start_at(&cfg, job_id, start).await?;
    loop {
        let event = events.next_event().await?;
        println!("{}", json::to_json(schema::GENERATION_EVENT, &event));
        if until_done && t2v_producer::watch::is_terminal(&event) {
            return Ok(());
        }
    }
}

/// `t2v topics apply`: creates or aligns the topics of `file`, one line a topic.
async fn topics_apply(
    cfg: SubmitterConfig,
    file: &Path,
    replication_factor: Option<i32>,
) -> Result<(), Failure> {
    let specs = topics::load(file).map_err(|e| fail(2, e.to_string()))?;
    let outcomes = topics::apply(
        cfg.client_config(),
        &specs,
        replication_factor,
        cfg.connect_timeout,
        &cfg.brokers,
    )
    .await
    .map_err(|e| match e {
        topics::TopicsError::Kafka(k) => Failure::from(k),
        other => fail(1, other.to_string()),
    })?;
    for (name, outcome) in outcomes {
        match outcome {
            Outcome::Created => println!("{name}: created"),
            Outcome::Unchanged => println!("{name}: ok"),
            Outcome::Updated(changes) => println!("{name}: updated ({})", changes.join(", ")),
        }
    }
    Ok(())
}

/// Builds the request from the flags. Explicit values must be in range (0 is not "default" here:
/// omit the flag for the model's default).
fn request_from_flags(args: &SubmitArgs, prompt: String) -> Result<GenerationRequest, Failure> {
    let (width, height) = match &args.size {
        Some(size) => parse_size(size)?,
        None => (0, 0),
    };
    reject_zero_counts(args)?;
    let req = GenerationRequest {
        job_id: args.job_id.clone().unwrap_or_default(),
        model: args.model.clone(),
        prompt,
        negative_prompt: args.negative_prompt.clone().unwrap_or_default(),
        width,
        height,
        num_frames: args.frames.unwrap_or(0),
        fps: args.fps.unwrap_or(0),
        num_inference_steps: args.steps.unwrap_or(0),
        guidance_scale: args.guidance,
        guidance_scale_2: args.guidance_2,
        shift: args.shift,
        sampler: parse_sampler(args.sampler.as_deref())? as i32,
        seed: args.seed,
        priority: args.priority,
        labels: parse_labels(&args.labels)?,
        ..Default::default()
    };
    validate::request(&req)?;
    Ok(req)
}

/// `WIDTHxHEIGHT`, each side non-zero (the contract checks the rest).
fn parse_size(size: &str) -> Result<(u32, u32), Failure> {
    let (w, h) = size
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)))
        .ok_or_else(|| {
            fail(
                2,
                format!("invalid size: expected WIDTHxHEIGHT such as 1280x720, got {size:?}"),
            )
        })?;
    for (field, v) in [("width", w), ("height", h)] {
        if v == 0 {
            return Err(fail(
                2,
                format!(
                    "invalid {field}: must be {}..={}, got 0",
                    validate::MIN_SIDE,
                    validate::MAX_SIDE
                ),
            ));
        }
    }
    Ok((w, h))
}

/// An explicit 0 for frames, fps or steps is an error, not "the model's default".
fn reject_zero_counts(args: &SubmitArgs) -> Result<(), Failure> {
    for (field, value, max) in [
        ("num_frames", args.frames, validate::MAX_FRAMES),
        ("fps", args.fps, validate::MAX_FPS),
        ("num_inference_steps", args.steps, validate::MAX_STEPS),
    ] {
        if value == Some(0) {
            return Err(fail(
                2,
                format!(
                    "invalid {field}: must be 1..={max}, got 0 (omit the flag for the model default)"
                ),
            ));
        }
    }
    Ok(())
}

fn parse_sampler(sampler: Option<&str>) -> Result<Sampler, Failure> {
    match sampler.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(Sampler::Unspecified),
        Some("unipc") => Ok(Sampler::Unipc),
        Some("euler" | "flow-euler" | "flow_euler") => Ok(Sampler::FlowEuler),
        Some(other) => Err(fail(
            2,
            format!("invalid sampler: must be unipc or euler, got {other:?}"),
        )),
    }
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    labels
        .iter()
        .map(|label| {
            key_value(label).ok_or_else(|| {
                fail(
                    2,
                    format!("invalid labels: expected KEY=VALUE, got {label:?}"),
                )
            })
        })
        .collect()
}

/// The requests of a batch file with their 1-based line numbers; lines without a job id get
/// [`t2v_producer::submitter::batch_job_id`].
fn read_batch(path: &Path) -> Result<Vec<(usize, GenerationRequest)>, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| fail(2, format!("cannot read --batch {}: {e}", path.display())))?;
    let mut requests = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| fail(2, format!("cannot read {}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let at_line =
            |e: &dyn std::fmt::Display| fail(2, format!("{}:{}: {e}", path.display(), n + 1));
        let mut req: GenerationRequest =
            json::from_json(schema::GENERATION_REQUEST, &line).map_err(|e| at_line(&e))?;
        if req.job_id.is_empty() {
            req.job_id = t2v_producer::submitter::batch_job_id(n + 1, &line);
        }
        validate::request(&req).map_err(|e| at_line(&e))?;
        requests.push((n + 1, req));
    }
    if requests.is_empty() {
        return Err(fail(2, format!("{} holds no requests", path.display())));
    }
    Ok(requests)
}

async fn submit(cfg: SubmitterConfig, args: SubmitArgs) -> Result<(), Failure> {
    // Validate everything before touching the network: bad input exits 2 with nothing produced.
    let requests = match (&args.batch, &args.prompt) {
        (Some(path), _) => read_batch(path)?,
        (None, Some(prompt)) => vec![(0, request_from_flags(&args, prompt.clone())?)],
        (None, None) => return Err(fail(2, "give a prompt or --batch FILE")),
    };
    let requests = with_image(requests, &args).await?;
    let submitter = Submitter::new(cfg)?;
    submitter.check_brokers().await?;
    match &args.batch {
        Some(path) => submit_batch(&submitter, requests, path).await,
        None => {
            let (_, req) = requests.into_iter().next().expect("one request");
            submit_one(&submitter, req, &args).await
        }
    }
}

/// The single request with its `--image` (uploaded first when it must go by URI), checked
/// again with the image in place (the whole request must still fit 64 KiB).
async fn with_image(
    mut requests: Vec<(usize, GenerationRequest)>,
    args: &SubmitArgs,
) -> Result<Vec<(usize, GenerationRequest)>, Failure> {
    let Some(image) = &args.image else {
        return Ok(requests);
    };
    let store = args
        .image_store
        .as_deref()
        .map(t2v_producer::image::ImageStore::from_url)
        .transpose()
        .map_err(image_failure)?;
    let image = t2v_producer::image::from_argument(image, store.as_ref())
        .await
        .map_err(image_failure)?;
    for (_, req) in &mut requests {
        req.image = Some(image.clone());
        validate::request(req)?;
    }
    Ok(requests)
}

/// `submit --batch`: one line a request. Every acknowledged line is printed (stdout) and every
/// failed one named (stderr), even when some fail; the exit code is then the first failure's.
async fn submit_batch(
    submitter: &Submitter,
    requests: Vec<(usize, GenerationRequest)>,
    path: &Path,
) -> Result<(), Failure> {
    let (lines, requests): (Vec<usize>, Vec<GenerationRequest>) = requests.into_iter().unzip();
    let total = requests.len();
    let outcomes = submitter.submit_each(requests).await?;
    let mut first_failure = None;
    let mut failed = 0;
    for (line, (job_id, outcome)) in lines.into_iter().zip(outcomes) {
        match outcome {
            Ok(s) => println!(
                "submitted {} (partition {}, offset {})",
                s.job_id, s.partition, s.offset
            ),
            Err(e) => {
                failed += 1;
                eprintln!("t2v: {}:{line}: job {job_id} not sent: {e}", path.display());
                first_failure.get_or_insert(e);
            }
        }
    }
    match first_failure {
        None => {
            eprintln!("t2v: {total} requests from {} submitted", path.display());
            Ok(())
        }
        Some(e) => {
            let code = Failure::from(e).code;
            Err(fail(
                code,
                format!(
                    "{failed} of {total} requests from {} not sent ({} submitted, listed above); \
                     send the same file again: its job ids are stable, so the fleet renders each line once",
                    path.display(),
                    total - failed
                ),
            ))
        }
    }
}

/// `submit PROMPT`, with `--wait` following the job to its end.
async fn submit_one(
    submitter: &Submitter,
    req: GenerationRequest,
    args: &SubmitArgs,
) -> Result<(), Failure> {
    let req = submitter.prepare(req)?;
    let mut watch = if args.wait {
        Some(submitter.watch_job(&req.job_id).await?)
    } else {
        None
    };
    let submitted = submitter.submit(req).await?;
    println!(
        "submitted {} (partition {}, offset {}, trace {})",
        submitted.job_id,
        submitted.partition,
        submitted.offset,
        submitted.trace.trace_id_hex()
    );
    let Some(watch) = watch.as_mut() else {
        return Ok(());
    };
    let terminal = wait_with_progress(watch, &submitted.job_id, args.wait_timeout_secs).await?;
    report_terminal(terminal, args.wait_timeout_secs)
}

/// Waits for the job's end with a progress bar (plain lines when no terminal is attached).
async fn wait_with_progress(
    watch: &mut JobWatch,
    job_id: &str,
    timeout_secs: u64,
) -> Result<Option<Terminal>, Failure> {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] step {pos}/{len} · ETA {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(job_id.to_string());
    bar.set_message("waiting for a worker");
    bar.enable_steady_tick(Duration::from_millis(200));
    let terminal = watch
        .wait_terminal(Some(Duration::from_secs(timeout_secs)), |p| {
            bar.set_length(u64::from(p.total_steps.max(1)));
            bar.set_position(u64::from(p.step));
            bar.set_message(format!("{:.0}s", p.eta_ms as f64 / 1000.0));
            if !bar.is_hidden() {
                return;
            }
            // No terminal attached: a plain line per update keeps logs readable.
            eprintln!("{job_id}: step {}/{}", p.step, p.total_steps);
        })
        .await?;
    bar.finish_and_clear();
    Ok(terminal)
}

fn report_terminal(terminal: Option<Terminal>, timeout_secs: u64) -> Result<(), Failure> {
    match terminal {
        Some(Terminal::Completed(GenerationEvent { job_id, kind: Some(Kind::Completed(c)), .. })) => {
            println!("completed {job_id} (seed {})", c.seed);
            for (name, artifact) in [("video", &c.video), ("thumbnail", &c.thumbnail), ("manifest", &c.manifest)] {
                if let Some(a) = artifact {
                    println!("  {name:9} {} ({} bytes, sha256 {})", a.uri, a.size_bytes, a.sha256);
                }
            }
            if let Some(t) = &c.timings {
                println!(
                    "  timings   total {:.1}s: text {:.1}s, denoise {:.1}s, decode {:.1}s, encode {:.1}s, upload {:.1}s",
                    t.total_ms as f64 / 1e3,
                    t.text_encode_ms as f64 / 1e3,
                    t.denoise_ms as f64 / 1e3,
                    t.vae_decode_ms as f64 / 1e3,
                    t.encode_ms as f64 / 1e3,
                    t.upload_ms as f64 / 1e3
                );
            }
            Ok(())
        }
        Some(Terminal::Failed(GenerationEvent { job_id, kind: Some(Kind::Failed(f)), .. })) => {
            let code = t2v_proto::v1::ErrorCode::try_from(f.code).map(|c| c.as_str_name()).unwrap_or("UNKNOWN");
            Err(fail(4, format!("job {job_id} failed ({code}{}): {}", if f.retryable { ", retryable" } else { "" }, f.message)))
        }
        Some(Terminal::Canceled(GenerationEvent { job_id, kind: Some(Kind::Canceled(c)), .. })) => {
            Err(fail(5, format!("job {job_id} was canceled at step {}: {}", c.at_step, c.reason)))
        }
        Some(_) => Err(fail(1, "unexpected terminal event")),
        None => Err(fail(6, format!("no terminal event within {timeout_secs}s; the job may still be queued — follow it with `t2v watch --job ID`"))),
    }
}
