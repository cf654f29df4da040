//! Ulysses sequence parallelism: the tokens of one forward split over the ranks of a group.
//!
//! Rank `r` of `n` holds tokens `r·m .. (r+1)·m` with `m = ⌈tokens / n⌉`; the last shards are
//! padded with zero tokens when `n` does not divide the sequence. Everything in a Wan block is
//! per token except the self-attention, which needs every token: before it an all-to-all turns
//! each rank's `[tokens/n, heads]` into `[tokens, heads/n]` (the padding dropped, so no query
//! ever attends to a padding key), after it a second all-to-all turns the result back. Padding
//! tokens are computed like any other and thrown away when the shards are gathered.

use tch::Tensor;

use crate::error::{PipelineError, Result};
use crate::parallel::comm::Communicator;

/// One rank's view of a sequence split over its Ulysses group.
pub struct SequenceShard<'a> {
    comm: &'a dyn Communicator,
    /// Real tokens in the whole sequence.
    tokens: i64,
    /// Tokens every rank holds (padding included).
    per_rank: i64,
}

impl<'a> SequenceShard<'a> {
    /// The split of `tokens` tokens over `comm`'s ranks.
    pub fn new(comm: &'a dyn Communicator, tokens: i64) -> Self {
        let ranks = comm.size() as i64;
        Self {
            comm,
            tokens,
            per_rank: (tokens + ranks - 1) / ranks,
        }
    }

    pub fn ranks(&self) -> i64 {
        self.comm.size() as i64
    }

    /// Tokens of the whole sequence (without padding).
    pub fn tokens(&self) -> i64 {
        self.tokens
    }

    /// Tokens of each shard (padding included).
    pub fn tokens_per_rank(&self) -> i64 {
        self.per_rank
    }

    /// This rank's rows of `t` along `dim` (which holds every token), zero-padded to
    /// [`Self::tokens_per_rank`].
    pub fn shard(&self, t: &Tensor, dim: i64) -> Result<Tensor> {
        let size = t.size();
        let axis = usize::try_from(dim)
            .ok()
            .filter(|&d| d < size.len() && size[d] == self.tokens)
            .ok_or_else(|| {
                PipelineError::invalid(
                    "sequence shard",
                    format!(
                        "dim {dim} of {size:?} does not hold the {} tokens",
                        self.tokens
                    ),
                )
            })?;
        if self.ranks() == 1 {
            return Ok(t.shallow_clone());
        }
        let start = (self.comm.rank() as i64 * self.per_rank).min(self.tokens);
        let real = (self.tokens - start).min(self.per_rank);
        // A copy that owns its storage: a view would keep the whole sequence alive.
        let part = t.f_narrow(dim, start, real)?;
        let part = part.f_to_dtype(part.kind(), false, true)?;
        pad_tokens(&part, axis, self.per_rank)
    }

    /// Before the attention: `parts` (q, k, v) `[B, tokens_per_rank, heads, head_dim]` of this
    /// rank's tokens → `[B, tokens, heads/n, head_dim]` of this rank's heads over every token,
    /// with one all-to-all for the three.
    pub fn tokens_to_heads<const N: usize>(&self, parts: [Tensor; N]) -> Result<[Tensor; N]> {
        let ranks = self.ranks();
        if ranks == 1 {
            return Ok(parts);
        }
        let heads = parts[0].size().get(2).copied().unwrap_or(0);
        if heads % ranks != 0 {
            return Err(PipelineError::invalid(
                "sequence parallel degree",
                format!("{ranks} ranks do not divide the {heads} attention heads"),
            ));
        }
        // send[j]: heads j·h/n .. (j+1)·h/n of every part, stacked → [N, B, m, h/n, d]
        let groups: Vec<Vec<Tensor>> = parts
            .iter()
            .map(|p| p.f_chunk(ranks, 2))
            .collect::<std::result::Result<_, _>>()?;
        let send = (0..ranks as usize)
            .map(|j| Tensor::f_stack(&groups.iter().map(|g| &g[j]).collect::<Vec<_>>(), 0))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        drop(groups);
        let received = self.comm.all_to_all(send)?;
        // every rank's tokens in rank order, then the padding dropped
        let all = Tensor::f_cat(&received, 2)?.f_narrow(2, 0, self.tokens)?;
        let unstacked = all.f_unbind(0)?;
        unstacked.try_into().map_err(|_| PipelineError::Collective {
            message: "all_to_all returned another number of tensors than it was sent".into(),
        })
    }

    /// After the attention: `[B, tokens, heads/n, head_dim]` → `[B, tokens_per_rank, heads,
    /// head_dim]` of this rank's tokens (the reverse of [`Self::tokens_to_heads`]).
    pub fn heads_to_tokens(&self, out: &Tensor) -> Result<Tensor> {
        let ranks = self.ranks();
        if ranks == 1 {
            return Ok(out.shallow_clone());
        }
        let padded = pad_tokens(out, 1, self.per_rank * ranks)?;
        let send = padded
            .f_chunk(ranks, 1)?
            .into_iter()
            .map(|t| t.f_contiguous())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let received = self.comm.all_to_all(send)?;
        Ok(Tensor::f_cat(&received, 2)?)
    }

    /// Every rank's shard `[B, tokens_per_rank, …]` → the whole sequence `[B, tokens, …]`, on
    /// every rank.
    pub fn gather_tokens(&self, shard: &Tensor) -> Result<Tensor> {
        if self.ranks() == 1 {
            return Ok(shard.shallow_clone());
        }
        let all = self.comm.all_gather(&shard.f_contiguous()?)?;
        Ok(Tensor::f_cat(&all, 1)?.f_narrow(1, 0, self.tokens)?)
    }
}

/// `t` with zero rows appended along `axis` up to `len` rows.
fn pad_tokens(t: &Tensor, axis: usize, len: i64) -> Result<Tensor> {
    let size = t.size();
    let missing = len - size[axis];
    if missing == 0 {
        return Ok(t.shallow_clone());
    }
    let mut zeros_shape = size.clone();
    zeros_shape[axis] = missing;
    let zeros = Tensor::f_zeros(&zeros_shape, (t.kind(), t.device()))?;
    Ok(Tensor::f_cat(&[t.shallow_clone(), zeros], axis as i64)?)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;
    use crate::parallel::comm::InProcessGroup;

    /// Runs `work` on `n` rank threads of one group, each with its shard of `tokens` tokens.
    fn on_ranks<T: Send>(
        n: usize,
        tokens: i64,
        work: impl Fn(&SequenceShard<'_>) -> T + Sync,
    ) -> Vec<T> {
        let groups = InProcessGroup::new(&vec![Device::Cpu; n]);
        std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|g| {
                    let work = &work;
                    s.spawn(move || work(&SequenceShard::new(&g, tokens)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn sequence(tokens: i64, heads: i64) -> Tensor {
        Tensor::arange(tokens * heads * 2, (Kind::Float, Device::Cpu)).view([1, tokens, heads, 2])
    }

    #[test]
    fn shards_cover_the_sequence_with_zero_padding_at_the_end() {
        // 7 tokens over 3 ranks: 3 + 3 + 1 real tokens, the last shard padded with 2
        let x = sequence(7, 1);
        let shards = on_ranks(3, 7, |seq| seq.shard(&sequence(7, 1), 1).unwrap());
        assert!(shards.iter().all(|s| s.size() == [1, 3, 1, 2]));
        assert!(shards[2]
            .narrow(1, 1, 2)
            .equal(&Tensor::zeros([1, 2, 1, 2], (Kind::Float, Device::Cpu))));
        let gathered = on_ranks(3, 7, |seq| {
            let shard = seq.shard(&sequence(7, 1), 1).unwrap();
            seq.gather_tokens(&shard).unwrap()
        });
        assert!(gathered.iter().all(|g| g.equal(&x)));
    }

    #[test]
    fn tokens_to_heads_and_back_are_exact_inverses() {
        // 10 tokens, 4 heads, over 4 ranks (padded to 12): each rank sees its head over every
        // real token, and the way back restores its own tokens.
        let x = sequence(10, 4);
        let results = on_ranks(4, 10, |seq| {
            let shard = seq.shard(&sequence(10, 4), 1).unwrap();
            let [heads] = seq.tokens_to_heads([shard.shallow_clone()]).unwrap();
            let back = seq.heads_to_tokens(&heads).unwrap();
            (heads, back.equal(&shard))
        });
        for (rank, (heads, round_trip)) in results.into_iter().enumerate() {
            assert!(
                heads.equal(&x.narrow(2, rank as i64, 1)),
                "rank {rank} heads"
            );
            assert!(
                round_trip,
                "rank {rank}: heads_to_tokens did not invert tokens_to_heads"
            );
        }
    }

    #[test]
    fn a_degree_that_does_not_divide_the_heads_is_refused() {
        let errors = on_ranks(2, 4, |seq| {
            let shard = seq.shard(&sequence(4, 3), 1).unwrap();
            seq.tokens_to_heads([shard]).unwrap_err().to_string()
        });
        assert!(
            errors[0].contains("do not divide the 3 attention heads"),
            "{}",
            errors[0]
        );
    }
}
