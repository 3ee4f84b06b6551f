//! RMSNorm per row in a fixed order of operations, the one llama.cpp's CPU backend uses: the
//! squares (f32) summed in f64, the mean rounded to f32, then x · (1/sqrt(mean + eps)) · weight.
//! A row's result never depends on the rows beside it (XLA:CPU vectorises its reduction
//! differently for 1 row and for 8, which moved batched replies off their lone ones).

/// `out = x * (1 / sqrt(mean(x²) + eps)) * weight` for one row.
///
/// Panics if the slices differ in length (callers validate shapes first).
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == weight.len() && x.len() == out.len(), "row shape");
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len().max(1) as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_f64_reference_and_is_the_same_for_a_row_wherever_it_sits() {
        for d in [1, 7, 16, 33, 576, 2048] {
            let x: Vec<f32> = (0..d).map(|i| ((i * 7919) % 211) as f32 / 37.0 - 2.5).collect();
            let w: Vec<f32> = (0..d).map(|i| 0.5 + (i % 13) as f32 / 10.0).collect();
            let mut out = vec![0.0; d];
            rms_norm_row(&x, &w, 1e-5, &mut out);
            let mean: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let scale = 1.0 / (mean + 1e-5).sqrt();
            for i in 0..d {
                let want = x[i] as f64 * scale * w[i] as f64;
                assert!((out[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{d} {i}");
            }
            let mut again = vec![0.0; d];
            rms_norm_row(&x.clone(), &w, 1e-5, &mut again);
            assert_eq!(out, again);
        }
    }

    #[test]
    fn a_zero_row_stays_finite() {
        let mut out = [1.0f32; 4];
        rms_norm_row(&[0.0; 4], &[1.0; 4], 1e-6, &mut out);
        assert_eq!(out, [0.0; 4]);
    }
}
