//! [`ParkedWeights`]: a component's weights moved between the device and (pinned) host memory,
//! so that the policy can keep idle components off the device.

use std::cell::Cell;

use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// The weights of one component, movable between the compute device and host memory. On a
/// CUDA device the host copies are pinned (packed into 1 GiB buffers, so that the pinned
/// allocator's power-of-two rounding wastes little); on the CPU they share the weights' storage.
pub struct ParkedWeights {
    variables: Vec<Tensor>,
    host: Vec<Tensor>,
    device: Device,
    on_device: Cell<bool>,
}

/// Size of the pinned host buffers the copies are packed into.
const PINNED_CHUNK_BYTES: usize = 1 << 30;

impl ParkedWeights {
    /// Takes the variables of a loaded component (on `device`) and makes their host copies.
    /// The weights stay on the device until [`Self::park`].
    pub fn new(mut variables: Vec<(String, Tensor)>, device: Device) -> Result<Self> {
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let variables: Vec<Tensor> = variables.into_iter().map(|(_, t)| t).collect();
        let host = match device {
            Device::Cuda(_) => pinned_copies(&variables, device)?,
            _ => variables.iter().map(Tensor::shallow_clone).collect(),
        };
        Ok(Self {
            variables,
            host,
            device,
            on_device: Cell::new(true),
        })
    }

    pub fn is_on_device(&self) -> bool {
        self.on_device.get()
    }

    /// Bytes of host memory the copies take (0 on the CPU, where they share the weights).
    pub fn host_bytes(&self) -> u64 {
        if self.device == Device::Cpu {
            return 0;
        }
        self.host.iter().map(tensor_bytes).sum()
    }

    /// Points every weight at its host copy, freeing the device copy. No-op when parked.
    pub fn park(&self) -> Result<()> {
        if !self.on_device.get() {
            return Ok(());
        }
        tch::no_grad(|| -> Result<()> {
            for (variable, host) in self.variables.iter().zip(&self.host) {
                variable.shallow_clone().f_set_data(host)?;
            }
            Ok(())
        })?;
        self.on_device.set(false);
        Ok(())
    }

    /// Copies every weight back to the device (asynchronously from pinned memory; later work on
    /// the same stream waits for it). No-op when already there.
    pub fn fetch(&self) -> Result<()> {
        if self.on_device.get() {
            return Ok(());
        }
        tch::no_grad(|| -> Result<()> {
            for (variable, host) in self.variables.iter().zip(&self.host) {
                let on_device = host.f_to_device_(self.device, host.kind(), true, false)?;
                variable.shallow_clone().f_set_data(&on_device)?;
            }
            Ok(())
        })?;
        self.on_device.set(true);
        Ok(())
    }
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

/// Host copies of `variables` in pinned buffers of about [`PINNED_CHUNK_BYTES`], one dtype per
/// buffer (a tensor larger than that gets its own).
fn pinned_copies(variables: &[Tensor], device: Device) -> Result<Vec<Tensor>> {
    let mut copies: Vec<Option<Tensor>> = variables.iter().map(|_| None).collect();
    let mut kinds: Vec<Kind> = Vec::new();
    for variable in variables {
        if !kinds.contains(&variable.kind()) {
            kinds.push(variable.kind());
        }
    }
    for kind in kinds {
        let members: Vec<usize> = (0..variables.len())
            .filter(|&i| variables[i].kind() == kind)
            .collect();
        let per_chunk = PINNED_CHUNK_BYTES / kind.elt_size_in_bytes();
        let mut start = 0;
        while start < members.len() {
            let (mut end, mut total) = (start, 0usize);
            while end < members.len()
                && (end == start || total + variables[members[end]].numel() <= per_chunk)
            {
                total += variables[members[end]].numel();
                end += 1;
            }
            let chunk =
                Tensor::f_empty([total as i64], (kind, Device::Cpu))?.f_pin_memory(device)?;
            let mut offset = 0i64;
            for &i in &members[start..end] {
                let source = &variables[i];
                let n = source.numel() as i64;
                let mut view = chunk
                    .f_narrow(0, offset, n)?
                    .f_view(source.size().as_slice())?;
                tch::no_grad(|| view.f_copy_(source))?;
                copies[i] = Some(view);
                offset += n;
            }
            start = end;
        }
    }
    Ok(copies.into_iter().flatten().collect())
}
