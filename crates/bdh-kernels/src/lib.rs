//! Hot loops of the BDH engine (and of its GPT baseline), as free functions on slices plus dimensions.
//!
//! Shape legend (as everywhere in bdh): B batch, T time, D `n_embd`, H `n_head`,
//! N neurons per head, V vocabulary. Every matrix is row-major.
//!
//! The kernels own the schedule: they take whole batched tensors — (B, H, T, N)
//! activations, products batched over (row, head) with [`Batch`] strides — and
//! split the work over the rayon pool themselves, so the model code names no
//! thread, block or SIMD width. Every fast kernel has a scalar twin that spells out
//! the definition with plain loops; the twins are compiled for the tests only,
//! which compare the two on random shapes.
//!
//! This is the only crate of bdh with `unsafe`: the AVX-512 dispatch, the gemm
//! call and the read-only memory map of data files.
//!
//! ```
//! use bdh_kernels::{matmul, MatMul};
//! let a = [1.0, 2.0, 3.0, 4.0]; // 2×2
//! let b = [1.0, 0.0, 0.0, 1.0]; // identity
//! let mut c = [0.0; 4];
//! matmul(&mut c, &a, &b, MatMul::new(2, 2, 2));
//! assert_eq!(c, a);
//! ```

mod attention;
mod elementwise;
mod half_state;
mod keyed_attention;
mod layer_norm;
mod matmul;
mod mmap;
mod neuron_decay;
mod peak;
pub mod profile;
mod recurrent;
mod rope;
mod rows;
mod schedule;
mod simd;
mod softmax_attention;
mod special;
mod tile;
#[cfg(test)]
mod twins;

pub use attention::{causal_linear_attention, causal_linear_attention_backward, Attention, AttentionSaved, Lags};
pub use elementwise::{add, add_groups, gated_product, gated_product_backward, scale_rows};
pub use half_state::{all_finite, narrow, rho_read_write_half, scale_half, widen, Half};
pub use keyed_attention::{keyed_attention, keyed_attention_backward, KeyedSaved};
pub use layer_norm::{layer_norm, layer_norm_backward, LN_EPS};
pub use matmul::{matmul, matmul_batched, transpose, Batch, MatMul};
pub use mmap::Mapped;
pub use neuron_decay::{neuron_decay_attention, neuron_decay_attention_backward, CHUNK};
pub use peak::fma_loop;
pub use recurrent::{active_pairs, decay_state, gate_listed, gather_dot, rho_read_write, rho_write, sparse_row_sum};
pub use rope::{rope, RopeDirection};
pub use rows::{add_bias, affine, affine_backward, bias_grad, gelu, gelu_backward};
pub use schedule::{parallel_chunks, parallel_each, rows_per_group};
pub use softmax_attention::{
    causal_softmax_attention, causal_softmax_attention_backward, softmax_attention_step, KvCache, SoftmaxAttention,
};
