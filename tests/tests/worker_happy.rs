//! `t2v-worker run` on the real broker and S3 server, the synthetic backend: one request becomes
//! one MP4 + thumbnail + manifest and exactly one Completed; the same job id again gives no new
//! outputs and an identical Completed.

use std::process::Command;
use std::time::Duration;

use t2v_contract::headers::TRACEPARENT;
use t2v_contract::{sha256_hex, TraceContext};
use t2v_proto::v1::{generation_event::Kind, GenerationRequest};
use t2v_tests::{
    assert_success, committed_offset, completed, get_object, header, list_keys, read_topic,
    synthetic_request, wait_completed, wait_events, WorkerSetup,
};

/// ffprobe's view of the first video stream: codec, width, height, pix_fmt, frames, rate.
fn ffprobe(path: &std::path::Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,pix_fmt,nb_read_frames,r_frame_rate",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["streams"][0].clone()
}

#[tokio::test]
async fn a_request_becomes_one_video_and_a_duplicate_changes_nothing() {
    let setup = WorkerSetup::new("happy", 2).await;
    let worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "20")]);
    let submitter = setup.submitter();
    let request = GenerationRequest {
        prompt: "a red fox in fresh snow".into(),
        width: 96,
        num_frames: 9,
        seed: Some(42),
        labels: [("team".to_string(), "vfx".to_string())].into(),
        ..synthetic_request("happy-1", 6)
    };
    let trace = TraceContext::new_root();
    submitter
        .submit_traced(request.clone(), trace.clone())
        .await
        .unwrap();

    let (events, c) = wait_completed(&setup.events, &worker, Duration::from_secs(90));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e.kind {
            Some(Kind::Accepted(_)) => "accepted",
            Some(Kind::Started(_)) => "started",
            Some(Kind::Progress(_)) => "progress",
            Some(Kind::Completed(_)) => "completed",
            _ => "other",
        })
        .collect();
    assert_eq!(&kinds[..2], ["accepted", "started"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"completed"));
    assert!(events
        .iter()
        .all(|e| e.job_id == "happy-1" && e.labels.get("team").map(String::as_str) == Some("vfx")));
    assert_eq!(
        (
            c.seed,
            c.width,
            c.height,
            c.num_frames,
            c.fps,
            c.num_inference_steps
        ),
        (42, 96, 64, 9, 8, 6)
    );
    assert_eq!(c.model, "wan2.2-t2v-a14b");

    // Every event continues the producer's trace.
    for record in read_topic(&setup.events, events.len(), Duration::from_secs(10)) {
        let tp = TraceContext::parse(&header(&record, TRACEPARENT).expect("traceparent")).unwrap();
        assert_eq!(tp.trace_id, trace.trace_id);
    }

    // The artifacts are where the event says, with the announced sizes and digests.
    let video = c.video.as_ref().unwrap();
    // Under the job's folder, in the folder of the run that committed (outputs are immutable).
    assert!(
        video
            .uri
            .contains(&format!("{}/happy-1/runs/0.0000/", setup.prefix))
            && video.uri.ends_with("/video.mp4"),
        "{}",
        video.uri
    );
    assert_eq!(video.content_type, "video/mp4");
    let video_bytes = get_object(&video.uri).await;
    assert_eq!(video_bytes.len() as u64, video.size_bytes);
    assert_eq!(sha256_hex(&video_bytes), video.sha256);
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("video.mp4");
    std::fs::write(&mp4, &video_bytes).unwrap();
    let probe = ffprobe(&mp4);
    assert_eq!(probe["codec_name"], "h264", "{probe}");
    assert_eq!(probe["pix_fmt"], "yuv420p", "{probe}");
    assert_eq!(
        (probe["width"].as_u64(), probe["height"].as_u64()),
        (Some(96), Some(64)),
        "{probe}"
    );
    assert_eq!(probe["nb_read_frames"], "9", "{probe}");
    assert_eq!(probe["r_frame_rate"], "8/1", "{probe}");
    // +faststart: the moov atom precedes mdat.
    let find = |atom: &[u8]| video_bytes.windows(4).position(|w| w == atom).unwrap();
    assert!(find(b"moov") < find(b"mdat"), "faststart layout");

    let thumb = c.thumbnail.as_ref().unwrap();
    let thumb_bytes = get_object(&thumb.uri).await;
    assert_eq!(&thumb_bytes[..2], &[0xff, 0xd8], "a JPEG");
    assert_eq!(sha256_hex(&thumb_bytes), thumb.sha256);
    assert_eq!(thumb.content_type, "image/jpeg");

    let manifest = c.manifest.as_ref().unwrap();
    let manifest_bytes = get_object(&manifest.uri).await;
    assert_eq!(sha256_hex(&manifest_bytes), manifest.sha256);
    let m: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(m["job_id"], "happy-1");
    assert_eq!(m["video"]["sha256"], video.sha256.as_str());
    assert_eq!(m["seed"], 42);

    // The offset moves once Completed is acknowledged (auto-commit of the stored offset).
    let mut committed = None;
    for _ in 0..50 {
        committed = (0..2)
            .filter_map(|p| committed_offset(&setup.group, &setup.requests, p))
            .max();
        if committed == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(committed, Some(1), "offset committed after Completed");

    let (status, metrics) = worker.http_get("/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("t2v_jobs_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("t2v_phase_duration_seconds_count{phase=\"denoise\"} 1"),
        "{metrics}"
    );
    assert_eq!(worker.http_get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(worker.http_get("/readyz").map(|r| r.0), Some(200));

    // Same job id again: no new outputs, the same Completed.
    let keys_before = list_keys(&setup.prefix).await;
    assert_eq!(
        keys_before.len(),
        4,
        "video, thumbnail, manifest, one attempt marker: {keys_before:?}"
    );
    submitter.submit(request).await.unwrap();
    let events = wait_events(&setup.events, Duration::from_secs(60), |e| {
        completed(e).len() >= 2
    });
    let done = completed(&events);
    assert_eq!(done.len(), 2, "logs:\n{}", worker.logs());
    assert_eq!(done[0].1, done[1].1, "both Completed events are identical");
    assert_eq!(
        list_keys(&setup.prefix).await,
        keys_before,
        "no new objects"
    );
    // Nothing else arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = wait_events(&setup.events, Duration::from_secs(3), |_| false);
    assert_eq!(completed(&all).len(), 2);
    assert!(
        worker.logs().contains("job finished"),
        "a summary line per job"
    );
}
