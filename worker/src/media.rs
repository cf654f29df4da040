//! Encoding frames with ffmpeg: an H.264 MP4 (yuv420p, `+faststart`, constant rate factor) and a
//! JPEG thumbnail of the middle frame, encoded side by side. ffmpeg reads raw RGB24 on stdin, so
//! nothing but the final files touches the disk (`+faststart` needs a seekable output file).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::MediaConfig;
use crate::generate::Frames;

/// ffmpeg failed; the message carries its stderr.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot run {ffmpeg}: {source} — install ffmpeg (with libx264) or set media.ffmpeg")]
    Spawn {
        ffmpeg: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ffmpeg failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("I/O error while encoding: {0}")]
    Io(#[from] std::io::Error),
}

/// The encoded files of one job, in a scratch directory removed on drop.
pub struct Encoded {
    pub dir: PathBuf,
    pub video: PathBuf,
    pub thumbnail: PathBuf,
}

impl Drop for Encoded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn run_ffmpeg(cfg: &MediaConfig, args: &[String], input: &[u8]) -> Result<(), MediaError> {
    let mut child = Command::new(&cfg.ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MediaError::Spawn {
            ffmpeg: cfg.ffmpeg.clone(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let write = async {
        let result = stdin.write_all(input).await;
        drop(stdin);
        result
    };
    let (written, output) = tokio::join!(write, child.wait_with_output());
    let output = output?;
    if !output.status.success() {
        return Err(MediaError::Failed {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    written?;
    Ok(())
}

fn raw_input(frames: &Frames, fps: u32) -> Vec<String> {
    [
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        &format!("{}x{}", frames.width, frames.height),
        "-r",
        &fps.to_string(),
        "-i",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Encodes `frames` at `fps` into `<work_dir>/<name>/video.mp4` and `thumbnail.jpg`.
pub async fn encode(
    cfg: &MediaConfig,
    frames: &Frames,
    fps: u32,
    name: &str,
) -> Result<Encoded, MediaError> {
    let root = if cfg.work_dir.is_empty() {
        std::env::temp_dir()
    } else {
        PathBuf::from(&cfg.work_dir)
    };
    let dir = root.join(format!("t2v-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let encoded = Encoded {
        video: dir.join("video.mp4"),
        thumbnail: dir.join("thumbnail.jpg"),
        dir,
    };
    let mut video_args = raw_input(frames, fps);
    video_args.extend(
        [
            "-c:v",
            "libx264",
            "-preset",
            &cfg.preset,
            "-crf",
            &cfg.crf.to_string(),
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    video_args.push(path_arg(&encoded.video));

    let mut thumb_args = raw_input(frames, fps);
    thumb_args.extend(
        ["-frames:v", "1", "-q:v", "3"]
            .iter()
            .map(|s| s.to_string()),
    );
    thumb_args.push(path_arg(&encoded.thumbnail));
    // Two processes at once: the thumbnail costs no wall time next to the video.
    tokio::try_join!(
        run_ffmpeg(cfg, &video_args, &frames.rgb),
        run_ffmpeg(cfg, &thumb_args, frames.frame(frames.count / 2)),
    )?;
    Ok(encoded)
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn encodes_an_mp4_and_a_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = MediaConfig {
            work_dir: dir.path().display().to_string(),
            ..Default::default()
        };
        let frames = Frames {
            width: 64,
            height: 32,
            count: 5,
            rgb: (0..64 * 32 * 3 * 5).map(|i| (i % 251) as u8).collect(),
        };
        let out = encode(&cfg, &frames, 8, "unit").await.unwrap();
        let mp4 = std::fs::read(&out.video).unwrap();
        assert_eq!(&mp4[4..8], b"ftyp", "an MP4 file");
        let jpeg = std::fs::read(&out.thumbnail).unwrap();
        assert_eq!(&jpeg[..2], &[0xff, 0xd8], "a JPEG file");
        let scratch = out.dir.clone();
        drop(out);
        assert!(!scratch.exists(), "scratch dir removed");
    }
}
