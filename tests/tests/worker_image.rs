//! Requests with a conditioning image on the real broker and S3 server, the synthetic backend
//! (whose first frame is the request's image, resized to the frame size): inline bytes and an
//! `s3://` object complete and the first frame shows the image; corrupt bytes, a 5000×5000 PNG,
//! a GIF, a missing object, a bucket the worker may not read and a `file://` URI on a worker that
//! allows none each fail with INVALID_ARGUMENT naming the problem, and the next job on the same
//! partition still runs. A model that does not take (or needs) an image refuses in one line.
//! A job interrupted mid-run resumes from its checkpoint with the same image, and starts over
//! when another object now stands behind the same URI.

use std::time::Duration;

use t2v_proto::v1::{
    condition_image::Source, generation_event::Kind, ConditionImage, ErrorCode, GenerationRequest,
};
use t2v_tests::{
    close_to, first_frame, get_object, gif, halves_png, list_keys, mean_colour, plain_png,
    put_object, stack_env, starts, synthetic_request, terminal, wait_committed, wait_events,
    wait_for_keys, WorkerSetup, LEFT, PLAIN, RIGHT,
};

fn inline(bytes: Vec<u8>) -> Option<ConditionImage> {
    Some(ConditionImage {
        source: Some(Source::Inline(bytes)),
    })
}

fn uri(uri: &str) -> Option<ConditionImage> {
    Some(ConditionImage {
        source: Some(Source::Uri(uri.to_string())),
    })
}

/// Where a test's images live in the stack's bucket, and the prefix a worker is allowed.
fn inputs(setup: &WorkerSetup) -> (String, String) {
    let key_prefix = format!("{}-inputs", setup.prefix);
    let allowed = format!("s3://{}/{key_prefix}/", stack_env()["T2V_S3_BUCKET"]);
    (key_prefix, allowed)
}

/// The first frame of a Completed job's video shows [`halves_png`]: its left part LEFT, its
/// right part RIGHT (the middle columns are skipped: Lanczos and the codec blur the seam).
fn assert_first_frame_is_the_image(mp4: &[u8], width: u32, height: u32) {
    let frame = first_frame(mp4, width, height);
    let left = mean_colour(&frame, width, 0..width / 2 - 8);
    let right = mean_colour(&frame, width, width / 2 + 8..width);
    assert!(
        close_to(left, LEFT, 12.0),
        "left half {left:?}, want {LEFT:?}"
    );
    assert!(
        close_to(right, RIGHT, 12.0),
        "right half {right:?}, want {RIGHT:?}"
    );
}

#[tokio::test]
async fn inline_and_s3_images_complete_and_open_the_video() {
    let setup = WorkerSetup::new("image-ok", 1).await;
    let (key_prefix, allowed) = inputs(&setup);
    let image_uri = put_object(&format!("{key_prefix}/halves.png"), halves_png(200, 120)).await;
    let worker = setup.start_worker(&[("T2V_STORAGE__IMAGE_URI_PREFIXES", allowed.as_str())]);
    let submitter = setup.submitter();
    let small = halves_png(64, 48);
    assert!(small.len() <= 48 * 1024);
    submitter
        .submit(GenerationRequest {
            image: inline(small),
            ..synthetic_request("img-inline", 2)
        })
        .await
        .unwrap();
    // No size: the image's aspect ratio at the model's default area (832×480), in steps of 16.
    submitter
        .submit(GenerationRequest {
            image: uri(&image_uri),
            width: 0,
            height: 0,
            ..synthetic_request("img-s3", 2)
        })
        .await
        .unwrap();

    let events = wait_events(&setup.events, Duration::from_secs(120), |e| {
        terminal(e, "img-s3").is_some()
    });
    let logs = worker.logs();
    let completed = |job: &str| match terminal(&events, job) {
        Some(Kind::Completed(c)) => c.clone(),
        other => panic!("{job}: {other:?}\n{logs}"),
    };
    let inline_done = completed("img-inline");
    let video = get_object(&inline_done.video.as_ref().unwrap().uri).await;
    assert_first_frame_is_the_image(&video, inline_done.width, inline_done.height);

    let s3_done = completed("img-s3");
    let area = 832.0 * 480.0;
    let aspect = 120.0 / 200.0_f64;
    let side = |v: f64| (v.round() as u32) / 16 * 16;
    assert_eq!(
        (s3_done.width, s3_done.height),
        (side((area / aspect).sqrt()), side((area * aspect).sqrt())),
        "the size follows the image"
    );
    let video = get_object(&s3_done.video.as_ref().unwrap().uri).await;
    assert_first_frame_is_the_image(&video, s3_done.width, s3_done.height);

    // The manifest names the image by URI (or digest), never by its bytes.
    let manifest: serde_json::Value =
        serde_json::from_slice(&get_object(&s3_done.manifest.as_ref().unwrap().uri).await).unwrap();
    let stored = get_object(&image_uri).await;
    assert_eq!(manifest["image"]["uri"], image_uri.as_str());
    assert_eq!(
        manifest["image"]["sha256"],
        t2v_contract::sha256_hex(&stored).as_str()
    );
    assert_eq!(manifest["image"]["size_bytes"], stored.len() as u64);
    let manifest: serde_json::Value =
        serde_json::from_slice(&get_object(&inline_done.manifest.as_ref().unwrap().uri).await)
            .unwrap();
    assert!(manifest["image"].get("uri").is_none(), "{manifest}");
    assert_eq!(
        manifest["image"]["sha256"],
        t2v_contract::sha256_hex(&halves_png(64, 48)).as_str()
    );
}

#[tokio::test]
async fn bad_images_fail_with_invalid_argument_and_the_partition_moves_on() {
    let setup = WorkerSetup::new("image-bad", 1).await;
    let (key_prefix, allowed) = inputs(&setup);
    let huge = put_object(&format!("{key_prefix}/huge.png"), plain_png(5000, 5000)).await;
    let missing = format!("{allowed}nothing-here.png");
    let elsewhere = "s3://another-bucket/cat.png".to_string();
    let worker = setup.start_worker(&[("T2V_STORAGE__IMAGE_URI_PREFIXES", allowed.as_str())]);
    let mut corrupt = halves_png(64, 48);
    corrupt.truncate(corrupt.len() / 2);
    // (job, image, words the Failed message must contain)
    let cases: Vec<(&str, Option<ConditionImage>, Vec<&str>)> = vec![
        ("bad-corrupt", inline(corrupt), vec!["image inline sha256:"]),
        ("bad-huge", uri(&huge), vec![huge.as_str(), "4096"]),
        ("bad-gif", inline(gif()), vec!["PNG, JPEG or WebP"]),
        (
            "bad-missing",
            uri(&missing),
            vec!["no such object", &missing],
        ),
        (
            "bad-bucket",
            uri(&elsewhere),
            vec!["not under a location this worker may read", &elsewhere],
        ),
        (
            "bad-file",
            uri("file:///etc/hostname"),
            vec!["not under a location this worker may read"],
        ),
    ];
    let submitter = setup.submitter();
    for (job, image, _) in &cases {
        submitter
            .submit(GenerationRequest {
                image: image.clone(),
                ..synthetic_request(job, 2)
            })
            .await
            .unwrap();
    }
    submitter
        .submit(synthetic_request("after-bad", 2))
        .await
        .unwrap();

    let events = wait_events(&setup.events, Duration::from_secs(120), |e| {
        terminal(e, "after-bad").is_some()
    });
    let logs = worker.logs();
    for (job, _, words) in &cases {
        match terminal(&events, job) {
            Some(Kind::Failed(f)) => {
                assert_eq!(f.code, ErrorCode::InvalidArgument as i32, "{job}: {f:?}");
                assert!(!f.retryable, "{job}");
                for word in words {
                    assert!(
                        f.message.contains(word),
                        "{job}: {:?} lacks {word:?}",
                        f.message
                    );
                }
                assert!(!f.message.contains('\n'), "{job}: one line");
            }
            other => panic!("{job}: {other:?}\n{logs}"),
        }
        assert!(
            !events
                .iter()
                .any(|e| &e.job_id == job && matches!(e.kind, Some(Kind::Started(_)))),
            "{job} never started"
        );
    }
    assert!(
        matches!(terminal(&events, "after-bad"), Some(Kind::Completed(_))),
        "{logs}"
    );
    // Every record's offset is committed: nothing is read again, nothing stalls.
    let next = cases.len() as i64 + 1;
    assert_eq!(
        wait_committed(&setup.group, &setup.requests, 0, next).await,
        Some(next),
        "{logs}"
    );
}

#[tokio::test]
async fn a_model_that_does_not_fit_the_request_refuses_it_in_one_line() {
    for (kind, job, image, words) in [
        (
            "text_to_video",
            "fit-t2v",
            inline(halves_png(16, 16)),
            "text-to-video only",
        ),
        ("image_to_video", "fit-i2v", None, "needs an image"),
    ] {
        let setup = WorkerSetup::new(job, 1).await;
        let worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_KIND", kind)]);
        let submitter = setup.submitter();
        submitter
            .submit(GenerationRequest {
                image,
                ..synthetic_request(job, 2)
            })
            .await
            .unwrap();
        let events = wait_events(&setup.events, Duration::from_secs(90), |e| {
            terminal(e, job).is_some()
        });
        match terminal(&events, job) {
            Some(Kind::Failed(f)) => {
                assert_eq!(f.code, ErrorCode::InvalidArgument as i32);
                assert!(f.message.contains(words), "{}", f.message);
                assert!(!f.message.contains('\n'));
            }
            other => panic!("{job}: {other:?}\n{}", worker.logs()),
        }
    }
}

/// Runs `job` (image at `key`) on a worker that checkpoints every step, SIGTERMs it after the
/// first checkpoint, replaces the object with `replacement` when given, and lets a second worker
/// finish: (the step checkpointed, the step the second run started from, the Completed event).
async fn interrupt_and_finish(
    job: &str,
    replacement: Option<Vec<u8>>,
) -> (u32, u32, t2v_proto::v1::Completed) {
    let setup = WorkerSetup::new(job, 1).await;
    let (key_prefix, allowed) = inputs(&setup);
    let key = format!("{key_prefix}/first.png");
    let image_uri = put_object(&key, halves_png(64, 48)).await;
    let env = [
        ("T2V_STORAGE__IMAGE_URI_PREFIXES", allowed.as_str()),
        ("T2V_CHECKPOINT__EVERY_STEPS", "1"),
        ("T2V_MODEL__SYNTHETIC_STEP_MS", "100"),
    ];
    let mut first = setup.start_worker(&env);
    setup
        .submitter()
        .submit(GenerationRequest {
            image: uri(&image_uri),
            ..synthetic_request(job, 200)
        })
        .await
        .unwrap();
    let checkpoints = format!("{}/{job}/checkpoint", setup.prefix);
    wait_for_keys(&checkpoints, Duration::from_secs(60), || first.logs()).await;
    first.stop(Duration::from_secs(30));
    let saved = list_keys(&checkpoints).await.len();
    assert_eq!(saved, 1, "a checkpoint stays for the next worker");
    if let Some(bytes) = replacement {
        put_object(&key, bytes).await;
    }
    let second = setup.start_worker(&env);
    let events = wait_events(&setup.events, Duration::from_secs(120), |e| {
        terminal(e, job).is_some()
    });
    let starts = starts(&events);
    assert_eq!(starts.len(), 2, "{starts:?}\n{}", second.logs());
    let saved_step = events
        .iter()
        .filter(|e| e.worker_id == starts[0].0)
        .filter_map(|e| match &e.kind {
            Some(Kind::Progress(p)) => Some(p.step),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    match terminal(&events, job) {
        Some(Kind::Completed(c)) => (saved_step, starts[1].1, c.clone()),
        other => panic!("{job}: {other:?}\n{}", second.logs()),
    }
}

#[tokio::test]
async fn a_resumed_attempt_keeps_the_image_or_starts_over_when_it_changed() {
    // The same object: the second worker resumes from the checkpoint.
    let (saved, resumed_from, done) = interrupt_and_finish("resume-same", None).await;
    assert!(
        resumed_from > 0,
        "resumed from a checkpoint (saved about {saved})"
    );
    let video = get_object(&done.video.as_ref().unwrap().uri).await;
    assert_first_frame_is_the_image(&video, done.width, done.height);

    // Another object behind the same URI: the checkpoint is refused and the run starts over,
    // with the new image.
    let (_, resumed_from, done) =
        interrupt_and_finish("resume-changed", Some(plain_png(64, 48))).await;
    assert_eq!(resumed_from, 0, "another image: no resume");
    let video = get_object(&done.video.as_ref().unwrap().uri).await;
    let frame = first_frame(&video, done.width, done.height);
    let colour = mean_colour(&frame, done.width, 0..done.width);
    assert!(close_to(colour, PLAIN, 12.0), "{colour:?}");
}
