//! `t2v submit --image PATH|URI` against the real broker and S3 server: a small file goes
//! inline, a larger one is uploaded to `--image-store` under its SHA-256 (the same object again
//! on a re-submit) and sent by URI, a larger one without a store is refused with nothing sent,
//! and a URI passes through as given.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use prost::Message as _;
use rdkafka::message::Message;
use t2v_contract::sha256_hex;
use t2v_proto::v1::{condition_image::Source, GenerationRequest};
use t2v_tests::{
    aws_env, binary, brokers, get_object, halves_png, read_topic, record_count, stack_env,
    unique_name, Topics,
};

fn t2v(topics: &Topics, args: &[&str]) -> Output {
    Command::new(binary("t2v"))
        .args(["--brokers", &brokers()])
        .args(["--requests-topic", &topics.requests])
        .args(["--events-topic", &topics.events])
        .args(["--control-topic", &topics.control])
        .args(args)
        .env_remove("T2V_BROKERS")
        .env_remove("T2V_IMAGE_STORE")
        .envs(aws_env())
        .output()
        .expect("run t2v")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The image source of each request on the topic, by job id.
fn sent_images(topic: &str, count: usize) -> BTreeMap<String, Source> {
    read_topic(topic, count, Duration::from_secs(20))
        .iter()
        .map(|record| {
            let req = GenerationRequest::decode(record.payload().unwrap()).unwrap();
            let source = req.image.and_then(|i| i.source);
            (req.job_id, source.expect("the request has an image"))
        })
        .collect()
}

#[tokio::test]
async fn images_go_inline_by_upload_or_by_uri() {
    let topics = Topics::create(1).await;
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.png");
    std::fs::write(&small, halves_png(32, 32)).unwrap();
    // Noise does not compress: well over the 48 KiB a request carries inline.
    let large_png = {
        let pixels = (0..160 * 160 * 3).map(|i| (i * 7919 % 251) as u8).collect();
        let image = image::RgbImage::from_raw(160, 160, pixels).unwrap();
        let mut out = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    assert!(large_png.len() > 48 * 1024, "{}", large_png.len());
    let large = dir.path().join("large.png");
    std::fs::write(&large, &large_png).unwrap();
    let store_prefix = unique_name("cli-images").replace('.', "-");
    let store = format!("s3://{}/{store_prefix}", stack_env()["T2V_S3_BUCKET"]);
    let small_arg = small.display().to_string();
    let large_arg = large.display().to_string();

    let submissions: [(&str, &[&str]); 4] = [
        ("small", &["--image", &small_arg]),
        ("large-1", &["--image", &large_arg, "--image-store", &store]),
        ("large-2", &["--image", &large_arg, "--image-store", &store]),
        ("uri", &["--image", "s3://t2v-inputs/cats/1.webp"]),
    ];
    for (job, args) in submissions {
        let out = t2v(
            &topics,
            &[&["submit", "a cat", "--job-id", job], args].concat(),
        );
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let images = sent_images(&topics.requests, 4);
    assert_eq!(images["small"], Source::Inline(halves_png(32, 32)));
    let uploaded = format!("{store}/{}.png", sha256_hex(&large_png));
    assert_eq!(images["large-1"], Source::Uri(uploaded.clone()));
    assert_eq!(
        images["large-2"], images["large-1"],
        "a re-submit names the same object"
    );
    assert_eq!(get_object(&uploaded).await, large_png);
    assert_eq!(
        images["uri"],
        Source::Uri("s3://t2v-inputs/cats/1.webp".into())
    );
}

#[tokio::test]
async fn an_image_that_cannot_be_sent_is_refused_with_nothing_produced() {
    let topics = Topics::create(1).await;
    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("large.png");
    let pixels: Vec<u8> = (0..200 * 200 * 3).map(|i| (i * 31 % 253) as u8).collect();
    let mut large_png = Vec::new();
    image::RgbImage::from_raw(200, 200, pixels)
        .unwrap()
        .write_to(
            &mut std::io::Cursor::new(&mut large_png),
            image::ImageFormat::Png,
        )
        .unwrap();
    std::fs::write(&large, &large_png).unwrap();
    let gif = dir.path().join("a.gif");
    std::fs::write(&gif, t2v_tests::gif()).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["submit", "a cat", "--image", large.to_str().unwrap()],
            "--image-store",
        ),
        (
            &["submit", "a cat", "--image", gif.to_str().unwrap()],
            "not a PNG, JPEG or WebP",
        ),
        (
            &["submit", "a cat", "--image", "https://example.com/cat.png"],
            "invalid image.uri",
        ),
        (
            &["submit", "a cat", "--image", "/nonexistent/cat.png"],
            "cannot read --image",
        ),
    ];
    for (args, words) in cases {
        let out = t2v(&topics, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert!(stderr.contains(words), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    assert_eq!(record_count(&topics.requests), 0, "nothing was produced");
    let help = Command::new(binary("t2v"))
        .args(["submit", "--help"])
        .output()
        .unwrap();
    let help = text(&help.stdout);
    for words in [
        "--image <PATH|URI>",
        "48 KiB",
        "--image-store <URL>",
        "SHA-256",
    ] {
        assert!(help.contains(words), "--help lacks {words:?}:\n{help}");
    }
}
