//! RMSNorm of one row: its sum of squares in a fixed order, so a row's numbers never depend on how many rows share the call.
//!
//! XLA:CPU vectorises a reduction over 8 rows differently from one over 1, which moved batched
//! replies off their lone ones; normalising each row separately inside XLA cost three small
//! ops per row per norm (1,400 of a 30-layer model's 8-row decode step). Here every row runs
//! the same loop whatever the batch.

/// Lanes of the running sum of squares: one AVX-512 vector, summed in a fixed tree at the end.
const LANES: usize = 16;

/// `out = x * (1 / sqrt(mean(x²) + eps)) * weight`, with x, weight and out of one length.
///
/// Panics if the lengths differ (callers validate shapes first).
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == weight.len() && x.len() == out.len(), "row shape");
    if x.is_empty() {
        return;
    }
    let mut lanes = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v * v;
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    let sum = chunks.remainder().iter().fold(lanes[0], |s, &v| s + v * v);
    let scale = 1.0 / (sum / x.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

#[cfg(test)]
mod tests {
    use super::rms_norm_row;

    #[test]
    fn matches_the_formula_in_f64() {
        for n in [1usize, 7, 16, 33, 576, 2048] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..n).map(|i| 0.5 + (i % 5) as f32 / 4.0).collect();
            let mut out = vec![0.0; n];
            rms_norm_row(&x, &w, 1e-5, &mut out);
            let mean = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / n as f64;
            let scale = 1.0 / (mean + 1e-5).sqrt();
            for i in 0..n {
                let want = x[i] as f64 * scale * w[i] as f64;
                assert!(
                    (out[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "n={n} i={i}"
                );
            }
        }
    }

    #[test]
    fn a_zero_row_stays_zero() {
        let mut out = vec![1.0; 32];
        rms_norm_row(&[0.0; 32], &[1.0; 32], 1e-6, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }
}
