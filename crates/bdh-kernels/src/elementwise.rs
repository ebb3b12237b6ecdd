//! Element-wise steps of the BDH layer and their gradients.

use crate::simd::multiversion;

multiversion! {
/// `x = max(x, 0)` in place.
pub fn relu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = v.max(0.0);
    }
}
}

multiversion! {
/// `z = x ⊙ y ⊙ keep`: the sparse product the decoder reads, through the dropout
/// scale `keep` (empty: no dropout).
pub fn gated_product(z: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
    for ((zi, &xi), &yi) in z.iter_mut().zip(x).zip(y) {
        *zi = xi * yi;
    }
    if !keep.is_empty() {
        z.iter_mut().zip(keep).for_each(|(zi, &k)| *zi *= k);
    }
}
}

multiversion! {
/// Backward of [`gated_product`] with `y = relu(y_latent)`: `dx` holds dL/dz on
/// entry; on return `dy = dz ⊙ keep ⊙ x ⊙ [y > 0]` (dL/dy_latent) and
/// `dx = dz ⊙ keep ⊙ y` (dL/dx through this path).
pub fn gated_product_backward(dx: &mut [f32], dy: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
    if !keep.is_empty() {
        dx.iter_mut().zip(keep).for_each(|(g, &k)| *g *= k);
    }
    for (((gx, gy), &xi), &yi) in dx.iter_mut().zip(dy.iter_mut()).zip(x).zip(y) {
        let on = if yi > 0.0 { 1.0 } else { 0.0 };
        *gy = *gx * xi * on;
        *gx *= yi;
    }
}
}

multiversion! {
/// `dx = [x > 0] ⊙ (dx + extra)`: the ReLU's backward of a gradient arriving by two paths.
pub fn relu_backward_add(dx: &mut [f32], extra: &[f32], x: &[f32]) {
    for ((g, &e), &xi) in dx.iter_mut().zip(extra).zip(x) {
        let on = if xi > 0.0 { 1.0 } else { 0.0 };
        *g = (*g + e) * on;
    }
}
}

/// Scalar twin of [`relu`], of [`gated_product`], of [`gated_product_backward`] and
/// of [`relu_backward_add`]: the four definitions index by index, in one place.
pub mod scalar {
    /// Twin of [`super::relu`].
    pub fn relu(x: &mut [f32]) {
        for v in x.iter_mut() {
            if *v < 0.0 {
                *v = 0.0;
            }
        }
    }
    /// Twin of [`super::gated_product`].
    pub fn gated_product(z: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
        for i in 0..z.len() {
            z[i] = x[i] * y[i] * if keep.is_empty() { 1.0 } else { keep[i] };
        }
    }
    /// Twin of [`super::gated_product_backward`].
    pub fn gated_product_backward(dx: &mut [f32], dy: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
        for i in 0..dx.len() {
            let dz = dx[i] * if keep.is_empty() { 1.0 } else { keep[i] };
            dy[i] = if y[i] > 0.0 { dz * x[i] } else { 0.0 };
            dx[i] = dz * y[i];
        }
    }
    /// Twin of [`super::relu_backward_add`].
    pub fn relu_backward_add(dx: &mut [f32], extra: &[f32], x: &[f32]) {
        for i in 0..dx.len() {
            dx[i] = if x[i] > 0.0 { dx[i] + extra[i] } else { 0.0 };
        }
    }
}
