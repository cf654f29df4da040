//! The VAE decode spread over the devices of a parallel run: the spatial tiles of diffusers'
//! tiled decode ([`AutoencoderKLWan::tile_grid`]) are dealt round-robin to the ranks, each rank
//! decodes its tiles on its device (every tile on its own, with its own causal cache, as in a
//! single-device tiled decode), and the caller blends and stitches them. The frames are those
//! of a single-device decode with the same tiling — the same computation per tile.

use tch::{Device, Tensor};

use crate::error::{PipelineError, Result};
use crate::wan::vae::{AutoencoderKLWan, Tiling};

/// Decodes `latents` (B, z_dim, T, h, w) with `tiling`, tile `k` on rank `k % devices.len()`
/// (on `devices[k % n]`), into a video clamped to [-1, 1] on `vae`'s device — as
/// [`AutoencoderKLWan::decode`] with that tiling enabled.
pub fn decode_tiles_parallel(
    vae: &AutoencoderKLWan,
    latents: &Tensor,
    tiling: Tiling,
    devices: &[Device],
) -> Result<Tensor> {
    let z = vae.prepare(latents)?;
    let (_, _, _, height, width) = z.size5()?;
    let ratio = vae.config().spatial_ratio();
    if height <= tiling.min_height / ratio && width <= tiling.min_width / ratio {
        // One tile: the whole decode, as `AutoencoderKLWan::decode` does it untiled.
        let mut single = vae.replica(vae.device())?;
        single.enable_tiling(tiling)?;
        return single.decode(&z);
    }
    let grid = vae.tile_grid(&z, &tiling)?;
    let ranks = devices.len().max(1);
    let home = vae.device();
    // Each rank's own handles (Tensor is not Sync): the VAE and the latents on its device.
    let workers = devices
        .iter()
        .map(|&d| Ok((vae.replica(d)?, z.f_to_device(d)?)))
        .collect::<Result<Vec<_>>>()?;
    let decoded: Vec<Result<Vec<(usize, Tensor)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .into_iter()
            .enumerate()
            .map(|(rank, (vae, z))| {
                let grid = &grid;
                scope.spawn(move || -> Result<Vec<(usize, Tensor)>> {
                    let _no_grad = tch::no_grad_guard();
                    let mut mine = Vec::new();
                    for (k, tile) in grid.tiles.iter().enumerate().skip(rank).step_by(ranks) {
                        let video = vae.decode_tile(&z, tile)?;
                        mine.push((k, video.f_to_device(home)?));
                    }
                    Ok(mine)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(PipelineError::Collective {
                        message: format!("rank {rank} panicked while decoding its VAE tiles"),
                    })
                })
            })
            .collect()
    });
    let mut tiles: Vec<Option<Tensor>> = grid.tiles.iter().map(|_| None).collect();
    for part in decoded {
        for (k, video) in part? {
            tiles[k] = Some(video);
        }
    }
    let tiles = tiles
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| PipelineError::Collective {
            message: "a VAE tile was not decoded".into(),
        })?;
    let mut video = vae.stitch_tiles(&grid, tiles)?;
    let _ = video.f_clamp_(-1.0, 1.0)?;
    Ok(video)
}
