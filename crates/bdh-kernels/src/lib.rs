//! Hot loops of the BDH engine, as free functions on slices plus dimensions.
//!
//! Shape legend (as everywhere in bdh): B batch, T time, D `n_embd`, H `n_head`,
//! N neurons per head, V vocabulary. Every matrix is row-major and contiguous.
//!
//! Every fast kernel here has a scalar twin (`*_scalar`) in the same module that
//! spells out the definition with plain loops; the tests in `tests/twins.rs`
//! compare the two on random shapes. The twins are slow on purpose and are not
//! used by the model.
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
mod layer_norm;
mod matmul;
mod peak;
mod recurrent;
mod rope;
mod simd;

pub use attention::{
    causal_linear_attention, causal_linear_attention_backward, causal_linear_attention_backward_scalar,
    causal_linear_attention_scalar,
};
pub use elementwise::{gated_product, gated_product_backward, relu, relu_backward_add, scalar as elementwise_scalar};
pub use layer_norm::{layer_norm, layer_norm_backward, layer_norm_backward_scalar, layer_norm_scalar, LN_EPS};
pub use matmul::{matmul, matmul_scalar, transpose, MatMul};
pub use peak::fma_loop;
pub use recurrent::{
    gather_dot, gather_dot_scalar, rho_read_write, rho_read_write_scalar, sparse_row_sum, sparse_row_sum_scalar,
};
pub use rope::{rope, rope_scalar, RopeDirection};
