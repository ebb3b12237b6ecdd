//! How a state stores ρ: in f32 (the default, and the only type training takes), or
//! in 16 bits — bf16 or f16 — read and accumulated in f32 and rounded as each value is
//! written ([`bdh_kernels::rho_read_write_half`]). Half the bytes per stream, and half
//! the memory traffic of a decoding step, which at many streams is what bounds it.

use bdh_kernels::{all_finite, narrow, widen, Half};

use crate::error::{Error, Result};
use crate::model::zeroed;

/// The element type of a state's ρ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateDtype {
    /// 32-bit floats: exact, as training keeps them.
    #[default]
    F32,
    /// bfloat16: f32's range, 8 significant bits.
    Bf16,
    /// IEEE half: 11 significant bits, values up to 65504 (larger ones saturate).
    F16,
}

impl StateDtype {
    /// Every type, by name.
    pub const ALL: [StateDtype; 3] = [StateDtype::F32, StateDtype::Bf16, StateDtype::F16];

    /// Its name: `f32`, `bf16` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            StateDtype::F32 => "f32",
            StateDtype::Bf16 => "bf16",
            StateDtype::F16 => "f16",
        }
    }

    /// Bytes of one value.
    pub fn bytes(self) -> usize {
        match self {
            StateDtype::F32 => 4,
            StateDtype::Bf16 | StateDtype::F16 => 2,
        }
    }

    /// The 16-bit format, or `None` for f32.
    pub fn half(self) -> Option<Half> {
        match self {
            StateDtype::F32 => None,
            StateDtype::Bf16 => Some(Half::Bf16),
            StateDtype::F16 => Some(Half::F16),
        }
    }
}

impl std::fmt::Display for StateDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StateDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| Error::Input(format!("state dtype `{s}`: it is one of f32 (the default), bf16 and f16")))
    }
}

/// ρ of one or more layers and streams, in its element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Rho {
    /// f32 values.
    F32(Vec<f32>),
    /// 16-bit values of the format.
    Half(Vec<u16>, Half),
}

/// A part of a [`Rho`], to read and write in place.
pub(crate) enum RhoMut<'a> {
    F32(&'a mut [f32]),
    Half(&'a mut [u16], Half),
}

impl Rho {
    /// `len` zeros of `dtype`.
    pub fn zeros(len: usize, dtype: StateDtype) -> Result<Self> {
        Ok(match dtype.half() {
            None => Rho::F32(zeroed(&[len])?),
            Some(half) => Rho::Half(zeroed_u16(len)?, half),
        })
    }

    /// Its element type.
    pub fn dtype(&self) -> StateDtype {
        match self {
            Rho::F32(_) => StateDtype::F32,
            Rho::Half(_, Half::Bf16) => StateDtype::Bf16,
            Rho::Half(_, Half::F16) => StateDtype::F16,
        }
    }

    /// Its number of values.
    pub fn len(&self) -> usize {
        match self {
            Rho::F32(v) => v.len(),
            Rho::Half(v, _) => v.len(),
        }
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes its values occupy.
    pub fn bytes(&self) -> usize {
        self.len() * self.dtype().bytes()
    }

    /// Whether every value is finite (checked in place).
    pub fn all_finite(&self) -> bool {
        match self {
            Rho::F32(v) => v.iter().all(|x| x.is_finite()),
            Rho::Half(v, half) => all_finite(v, *half),
        }
    }

    /// The values in f32 (a copy; exact for every type).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        match self {
            Rho::F32(v) => Ok(v.clone()),
            Rho::Half(v, half) => {
                let mut wide = zeroed(&[v.len()])?;
                widen(&mut wide, v, *half);
                Ok(wide)
            }
        }
    }

    /// The values in `dtype`: a copy, rounded to nearest when narrower.
    pub fn converted(&self, dtype: StateDtype) -> Result<Rho> {
        Ok(match (self, dtype.half()) {
            (Rho::F32(v), None) => Rho::F32(v.clone()),
            (Rho::F32(v), Some(half)) => {
                let mut out = zeroed_u16(v.len())?;
                narrow(&mut out, v, half);
                Rho::Half(out, half)
            }
            (Rho::Half(v, from), Some(to)) if *from == to => Rho::Half(v.clone(), to),
            (Rho::Half(..), None) => Rho::F32(self.to_f32()?),
            (Rho::Half(..), Some(_)) => Rho::F32(self.to_f32()?).converted(dtype)?,
        })
    }

    /// The f32 values, or an error naming `what` needs them.
    pub fn f32(&self, what: &str) -> Result<&[f32]> {
        match self {
            Rho::F32(v) => Ok(v),
            Rho::Half(..) => Err(self.needs_f32(what)),
        }
    }

    /// The f32 values to change, or an error naming `what` needs them.
    pub fn f32_mut(&mut self, what: &str) -> Result<&mut [f32]> {
        match self {
            Rho::F32(v) => Ok(v),
            Rho::Half(..) => Err(self.needs_f32(what)),
        }
    }

    fn needs_f32(&self, what: &str) -> Error {
        Error::Input(format!(
            "{what} keeps ρ in f32, and this state holds it in {} (make the state with the default dtype, f32)",
            self.dtype()
        ))
    }

    /// Every value 0.
    pub fn clear(&mut self) {
        match self {
            Rho::F32(v) => v.fill(0.0),
            Rho::Half(v, _) => v.fill(0),
        }
    }

    /// Copies `range` of `other`, of the same type and length, into the same place.
    pub fn copy_range(&mut self, other: &Rho, range: std::ops::Range<usize>) -> Result<()> {
        match (self, other) {
            (Rho::F32(a), Rho::F32(b)) => a[range.clone()].copy_from_slice(&b[range]),
            (Rho::Half(a, x), Rho::Half(b, y)) if x == y => a[range.clone()].copy_from_slice(&b[range]),
            (a, b) => {
                return Err(Error::Mismatch(format!("ρ of {} and of {}: one type is needed", a.dtype(), b.dtype())))
            }
        }
        Ok(())
    }

    /// `range` of its values, to read and write in place.
    pub(crate) fn part(&mut self, range: std::ops::Range<usize>) -> RhoMut<'_> {
        match self {
            Rho::F32(v) => RhoMut::F32(&mut v[range]),
            Rho::Half(v, half) => RhoMut::Half(&mut v[range], *half),
        }
    }
}

impl From<Vec<f32>> for Rho {
    fn from(values: Vec<f32>) -> Self {
        Rho::F32(values)
    }
}

impl RhoMut<'_> {
    /// Splits it into consecutive parts of `len` values each.
    pub(crate) fn chunks(self, len: usize) -> Vec<Self> {
        match self {
            RhoMut::F32(v) => v.chunks_exact_mut(len).map(RhoMut::F32).collect(),
            RhoMut::Half(v, half) => v.chunks_exact_mut(len).map(|c| RhoMut::Half(c, half)).collect(),
        }
    }
}

fn zeroed_u16(len: usize) -> Result<Vec<u16>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::TooLarge {
        what: format!("ρ of {len} 16-bit values"),
        need: len.checked_mul(2).map(|b| b as u64),
        have: None,
    })?;
    v.resize(len, 0);
    Ok(v)
}
