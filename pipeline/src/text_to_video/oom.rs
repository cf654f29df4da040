//! libtorch's allocation failures (CUDA's and the CPU's) told apart from other errors and turned
//! into [`PipelineError::OutOfMemory`] with the part of the message a user acts on.

use crate::error::PipelineError;

/// libtorch's allocation failure as [`PipelineError::OutOfMemory`], with what to try.
pub(super) fn out_of_memory(error: PipelineError) -> PipelineError {
    match error {
        PipelineError::Torch(e) if is_out_of_memory(&e.to_string()) => PipelineError::OutOfMemory {
            message: format!(
                "{} — try a smaller size or fewer frames, or the low-memory policy (swap experts, offload the text encoder, tiled VAE)",
                torch_oom_summary(&e.to_string())
            ),
        },
        other => other,
    }
}

/// Whether libtorch's error is an allocation failure: CUDA's caching allocator says "out of
/// memory", the CPU allocator "DefaultCPUAllocator: can't allocate memory" (or "not enough
/// memory").
fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory")
        || (message.contains("DefaultCPUAllocator")
            && (message.contains("can't allocate memory") || message.contains("not enough memory")))
}

/// The part of libtorch's out-of-memory text a user acts on: what was asked for, what was free,
/// what this and other processes hold — without the allocator breakdown and the documentation
/// link that follow (`PYTORCH_CUDA_ALLOC_CONF` does not apply to this binary).
pub fn torch_oom_summary(message: &str) -> &str {
    let first = message.lines().next().unwrap_or_default();
    let first = first
        .strip_prefix("Internal torch error: ")
        .unwrap_or(first);
    // The CPU allocator's text follows an "[enforce fail at alloc_cpu.cpp:N] err == 0." prefix.
    let first = first
        .find("DefaultCPUAllocator")
        .map_or(first, |start| &first[start..]);
    first
        .find(" Of the allocated memory")
        .map_or(first, |end| &first[..end])
        .trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_oom_messages_keep_what_a_user_acts_on() {
        // As libtorch 2.11 printed it on an H100 (another process held most of the memory).
        let cuda = "Internal torch error: CUDA out of memory. Tried to allocate 256.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 110.62 MiB is free. Process 613 has 76.17 GiB memory in use. Including non-PyTorch memory, this process has 2.88 GiB memory in use. Of the allocated memory 2.11 GiB is allocated by PyTorch, and 102.84 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)\nException raised from malloc at …";
        assert_eq!(
            torch_oom_summary(cuda),
            "CUDA out of memory. Tried to allocate 256.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 110.62 MiB is free. Process 613 has 76.17 GiB memory in use. Including non-PyTorch memory, this process has 2.88 GiB memory in use."
        );
        let cpu = "Internal torch error: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 4503599627370496 bytes. Error code 12 (Cannot allocate memory)";
        assert_eq!(
            torch_oom_summary(cpu),
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4503599627370496 bytes. Error code 12 (Cannot allocate memory)"
        );
        assert!(is_out_of_memory(cuda) && is_out_of_memory(cpu));
        assert!(!is_out_of_memory(
            "shape '[2, 3]' is invalid for input of size 5"
        ));
    }

    #[test]
    fn a_real_cpu_allocation_failure_is_out_of_memory() {
        // 2^50 f32 elements (4 PiB): libtorch's CPU allocator refuses it at once.
        let error = tch::Tensor::f_zeros([1i64 << 50], (tch::Kind::Float, tch::Device::Cpu))
            .map_err(PipelineError::from)
            .map(|_| ())
            .unwrap_err();
        match out_of_memory(error) {
            PipelineError::OutOfMemory { message } => assert!(
                message.starts_with("DefaultCPUAllocator: can't allocate memory")
                    && message.contains("low-memory policy"),
                "{message}"
            ),
            other => panic!("not classified as out of memory: {other}"),
        }
    }
}
