//! Spatial tiling of the encode and decode (diffusers `enable_tiling`, `tiled_encode`,
//! `tiled_decode`): overlapping tiles processed apart, each blended into the tile above and to
//! its left, cropped to the stride and stitched. The decode's tiles are exposed
//! ([`AutoencoderKLWan::tile_grid`], [`AutoencoderKLWan::decode_tile`],
//! [`AutoencoderKLWan::stitch_tiles`]) so that `crate::parallel` can spread them over devices.
//!
//! With the Wan2.2 VAE (`patch_size` p) the reference blends in patchified pixels: decoded tiles
//! before `unpatchify` (tile sizes and strides divided by p), and encoded tiles cut from the
//! patchified video with the tile sizes taken as patchified pixels (so a tile covers p× the
//! pixels it does for Wan2.1). Both are reproduced exactly.

use tch::Tensor;

use super::residual::unpatchify;
use super::AutoencoderKLWan;
use crate::error::Result;

/// Spatial tiling, in video pixels (diffusers `enable_tiling` arguments). Tiles of `min_*`
/// pixels start every `stride_*` pixels; the `min - stride` overlap is blended linearly into
/// the tile below / to the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub min_height: i64,
    pub min_width: i64,
    pub stride_height: i64,
    pub stride_width: i64,
}

impl Default for Tiling {
    /// diffusers `AutoencoderKLWan` defaults: 256-pixel tiles every 192 pixels.
    fn default() -> Self {
        Self {
            min_height: 256,
            min_width: 256,
            stride_height: 192,
            stride_width: 192,
        }
    }
}

/// One latent tile of a tiled decode: its top-left corner and size, in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentTile {
    pub top: i64,
    pub left: i64,
    pub height: i64,
    pub width: i64,
}

/// The tiles of one tiled decode, row by row, `columns` to a row.
#[derive(Debug, Clone, PartialEq)]
pub struct TileGrid {
    pub tiles: Vec<LatentTile>,
    pub columns: usize,
    pub tiling: Tiling,
    /// (height, width) of the latents.
    pub latent_size: [i64; 2],
}

/// Tiles of `tile` every `step` along an axis of `len`, each cut at the end: (start, size).
fn spans(len: i64, tile: i64, step: i64) -> Vec<(i64, i64)> {
    (0..len)
        .step_by(step as usize)
        .map(|start| (start, tile.min(len - start)))
        .collect()
}

impl AutoencoderKLWan {
    /// diffusers `tiled_decode` before its `unpatchify` and clamp.
    pub(super) fn decode_tiled(&self, z: &Tensor, tiling: &Tiling) -> Result<Tensor> {
        let grid = self.tile_grid(z, tiling)?;
        let mut tiles = Vec::with_capacity(grid.tiles.len());
        for tile in &grid.tiles {
            tiles.push(self.decode_tile(z, tile)?);
        }
        self.stitch_patched(&grid, tiles)
    }

    /// The latent tiles of a tiled decode of `z` (prepared, see [`Self::prepare`]), row by row.
    pub fn tile_grid(&self, z: &Tensor, tiling: &Tiling) -> Result<TileGrid> {
        let (_, _, _, height, width) = z.size5()?;
        let ratio = self.cfg.spatial_ratio();
        let rows = spans(
            height,
            tiling.min_height / ratio,
            tiling.stride_height / ratio,
        );
        let columns = spans(width, tiling.min_width / ratio, tiling.stride_width / ratio);
        let tiles = rows
            .iter()
            .flat_map(|&(top, height)| {
                columns.iter().map(move |&(left, width)| LatentTile {
                    top,
                    left,
                    height,
                    width,
                })
            })
            .collect();
        Ok(TileGrid {
            tiles,
            columns: columns.len(),
            tiling: *tiling,
            latent_size: [height, width],
        })
    }

    /// One tile of `z` decoded on its own (unclamped; for the Wan2.2 VAE still patchified).
    pub fn decode_tile(&self, z: &Tensor, tile: &LatentTile) -> Result<Tensor> {
        let part = z
            .f_narrow(3, tile.top, tile.height)?
            .f_narrow(4, tile.left, tile.width)?;
        tch::no_grad(|| self.decode_frames(&part))
    }

    /// The decoded tiles of `grid` (in its order, on one device) blended, cropped to the
    /// stride, stitched and unpatchified into the video — not yet clamped.
    pub fn stitch_tiles(&self, grid: &TileGrid, tiles: Vec<Tensor>) -> Result<Tensor> {
        unpatchify(&self.stitch_patched(grid, tiles)?, self.cfg.patch())
    }

    /// [`Self::stitch_tiles`] before `unpatchify`, in the decoder's output pixels.
    fn stitch_patched(&self, grid: &TileGrid, tiles: Vec<Tensor>) -> Result<Tensor> {
        let t = grid.tiling;
        let p = self.cfg.patch();
        let ratio = self.cfg.spatial_ratio();
        let stride = [t.stride_height / p, t.stride_width / p];
        let blend = [t.min_height / p - stride[0], t.min_width / p - stride[1]];
        let [height, width] = grid.latent_size;
        let size = [height * ratio / p, width * ratio / p];
        blend_and_stitch(tiles, grid.columns, blend, stride, size)
    }

    /// diffusers `tiled_encode` of a patchified video `x`: tiles of `min` patchified pixels
    /// every `stride` encoded apart (each through [`Self::encode_frames`]), blended in latent
    /// pixels and stitched.
    pub(super) fn encode_tiled(&self, x: &Tensor, tiling: &Tiling) -> Result<Tensor> {
        let (_, _, _, height, width) = x.size5()?;
        let ratio = self.cfg.spatial_ratio() / self.cfg.patch();
        let rows = spans(height, tiling.min_height, tiling.stride_height);
        let columns = spans(width, tiling.min_width, tiling.stride_width);
        let mut tiles = Vec::with_capacity(rows.len() * columns.len());
        for &(top, tile_h) in &rows {
            for &(left, tile_w) in &columns {
                let part = x.f_narrow(3, top, tile_h)?.f_narrow(4, left, tile_w)?;
                tiles.push(self.encode_frames(&part)?);
            }
        }
        let stride = [tiling.stride_height / ratio, tiling.stride_width / ratio];
        let blend = [
            tiling.min_height / ratio - stride[0],
            tiling.min_width / ratio - stride[1],
        ];
        let size = [height / ratio, width / ratio];
        blend_and_stitch(tiles, columns.len(), blend, stride, size)
    }
}

/// The reference's tile merge: `tiles` row by row, `columns` to a row; each blended (in place,
/// in order) over `blend` rows / columns with the tile above and the one to its left (both
/// already blended), cropped to `stride`, concatenated, and the whole cropped to `size`.
fn blend_and_stitch(
    tiles: Vec<Tensor>,
    columns: usize,
    blend: [i64; 2],
    stride: [i64; 2],
    size: [i64; 2],
) -> Result<Tensor> {
    let columns = columns.max(1);
    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    let mut tiles = tiles.into_iter();
    while !tiles.as_slice().is_empty() {
        rows.push(tiles.by_ref().take(columns).collect());
    }
    let mut stitched_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut parts = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let tile = rows[i][j].shallow_clone();
            if i > 0 {
                blend_into(&rows[i - 1][j], &tile, 3, blend[0])?;
            }
            if j > 0 {
                blend_into(&rows[i][j - 1], &tile, 4, blend[1])?;
            }
            let tile_size = tile.size();
            parts.push(tile.f_narrow(3, 0, stride[0].min(tile_size[3]))?.f_narrow(
                4,
                0,
                stride[1].min(tile_size[4]),
            )?);
        }
        stitched_rows.push(Tensor::f_cat(&parts, 4)?);
    }
    let whole = Tensor::f_cat(&stitched_rows, 3)?;
    let whole_size = whole.size();
    Ok(whole.f_narrow(3, 0, size[0].min(whole_size[3]))?.f_narrow(
        4,
        0,
        size[1].min(whole_size[4]),
    )?)
}

/// diffusers `blend_v` (dim 3) / `blend_h` (dim 4): the first `extent` rows/columns of `b`
/// fade from the last ones of `a`: `b[y] = a[−extent+y]·(1 − y/extent) + b[y]·(y/extent)`,
/// in place, one row at a time with scalar weights as the reference does.
fn blend_into(a: &Tensor, b: &Tensor, dim: i64, extent: i64) -> Result<()> {
    let (len_a, len_b) = (a.size()[dim as usize], b.size()[dim as usize]);
    let extent = extent.min(len_a).min(len_b);
    for y in 0..extent {
        let weight = y as f64 / extent as f64;
        let mixed = a
            .f_narrow(dim, len_a - extent + y, 1)?
            .f_mul_scalar(1.0 - weight)?
            .f_add(&b.f_narrow(dim, y, 1)?.f_mul_scalar(weight)?)?;
        b.f_narrow(dim, y, 1)?.f_copy_(&mixed)?;
    }
    Ok(())
}
