//! Parameters as one flat buffer with named slots.
//!
//! Every model family lays its trained tensors out in one `Vec<f32>`; a [`Slot`]
//! names each tensor and gives its shape and range. The optimizer, gradient
//! clipping, checkpoints and gradient averaging see only the buffer and the slots,
//! never a family's fields. Gradients and optimizer moments are buffers of the same
//! layout ([`Params::zeros_like`]).

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};

/// One named tensor of a [`Params`] buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The tensor's name, as in the reference's `state_dict`.
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Where its values lie in the flat buffer.
    pub range: Range<usize>,
}

/// Trained tensors (or gradients, or optimizer moments) in one flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    slots: Arc<[Slot]>,
    data: Vec<f32>,
}

impl Params {
    /// A zeroed buffer holding `tensors` (name, shape) one after the other, in order.
    /// Sizes are checked, so an absurd config is an error, not an overflow.
    pub fn zeros(tensors: &[(&str, Vec<usize>)]) -> Result<Self> {
        let mut slots = Vec::with_capacity(tensors.len());
        let mut end = 0usize;
        for (name, shape) in tensors {
            let len = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Error::Config(format!("tensor `{name}` {shape:?} has too many elements")))?;
            let start = end;
            end = end.checked_add(len).ok_or_else(|| Error::Config("parameters overflow the address space".into()))?;
            slots.push(Slot { name: name.to_string(), shape: shape.clone(), range: start..end });
        }
        crate::memory::ensure_fits(crate::memory::f32_bytes(Some(end)), &format!("{end} parameters"))?;
        Ok(Params { slots: slots.into(), data: crate::model::zeroed(&[end])? })
    }

    /// A zeroed buffer of the same layout (for gradients and optimizer moments).
    pub fn zeros_like(&self) -> Self {
        Params { slots: self.slots.clone(), data: vec![0.0; self.data.len()] }
    }

    /// The slots, in buffer order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The whole buffer.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The whole buffer, mutably.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// A fingerprint of the values' bits ([`fnv1a`] over each value's 32 bits as
    /// one word): equal buffers give equal fingerprints; any changed bit almost
    /// surely changes it.
    pub fn fingerprint(&self) -> String {
        fnv1a(self.data.iter().map(|v| u64::from(v.to_bits())))
    }

    /// Whether the buffer holds nothing.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The slot named `name`.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// The values of the tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.slot(name).map(|s| &self.data[s.range.clone()])
    }

    /// The values of the tensor named `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let range = self.slot(name)?.range.clone();
        Some(&mut self.data[range])
    }

    /// Each slot with its values, in buffer order.
    pub fn tensors(&self) -> impl Iterator<Item = (&Slot, &[f32])> {
        self.slots.iter().map(|s| (s, &self.data[s.range.clone()]))
    }

    /// The values of every slot, in buffer order, as disjoint mutable slices.
    pub fn split_mut(&mut self) -> Vec<&mut [f32]> {
        let mut rest: &mut [f32] = &mut self.data;
        let mut parts = Vec::with_capacity(self.slots.len());
        for s in self.slots.iter() {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(s.range.len());
            parts.push(head);
            rest = tail;
        }
        parts
    }

    /// Whether `other` has the same slots (names, shapes, ranges).
    pub fn same_layout(&self, other: &Params) -> bool {
        self.slots == other.slots
    }

    /// Whether the buffer holds exactly `tensors` (name, shape), in order, packed —
    /// what [`Params::zeros`] of them would make, checked without allocating one.
    pub fn has_layout(&self, tensors: &[(&str, Vec<usize>)]) -> bool {
        let mut end = 0usize;
        self.slots.len() == tensors.len()
            && self.slots.iter().zip(tensors).all(|(slot, (name, shape))| {
                let start = end;
                let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                match len.and_then(|len| start.checked_add(len)) {
                    Some(e) => end = e,
                    None => return false,
                }
                slot.name == *name && slot.shape == *shape && slot.range == (start..end)
            })
            && end == self.data.len()
    }
}

/// FNV-1a (64 bits, as 16 hex digits) over a stream of words, each xor-ed in whole.
pub fn fnv1a(words: impl IntoIterator<Item = u64>) -> String {
    let hash = words.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, w| (h ^ w).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{hash:016x}")
}
