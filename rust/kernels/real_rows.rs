//! `block_matmul` over the real rows of a right-padded batch: padding is neither multiplied nor left unwritten.
//!
//! Prompts run at bucketed lengths (16, 32, 64, ...) so that few programs compile; a
//! 41-token prompt fills 41 of 64 rows. The padding's outputs feed nothing a real row reads
//! (its keys sit after every real query and are overwritten by the tokens decoded next), so
//! computing them only costs time: up to half of every projection. Here only the real rows
//! are multiplied and the padding's outputs are zeros, finite whatever comes after. A row's
//! result does not depend on the other rows of a call, so the real rows come out exactly as
//! in a call over every row.

use super::block_matmul::{block_matmul, check_call, Output, Path};
use super::ggml::BlockWeight;

/// x holds `real.len()` sequences of `seq` rows of n_in values; sequence b's first `real[b]`
/// rows are real (more than `seq` counts as `seq`). Writes f32 [rows, n_out_i] into
/// `outputs[i]` as `block_matmul` does for the real rows, and zeros for the others.
///
/// # Safety
/// As `block_matmul`: each output must point to real.len() · seq · n_out_i writable f32
/// values that nothing else touches during the call.
pub unsafe fn block_matmul_real_rows(
    x: &[f32],
    seq: usize,
    real: &[usize],
    weights: &[BlockWeight],
    outputs: &[Output],
    threads: usize,
    path: Path,
) -> Result<(), String> {
    let rows = real.len() * seq;
    let n_in = check_call(x, rows, weights, outputs)?;
    let kept: Vec<usize> = real
        .iter()
        .enumerate()
        .flat_map(|(b, &n)| b * seq..b * seq + n.min(seq))
        .collect();
    if kept.len() == rows {
        return unsafe { block_matmul(x, rows, weights, outputs, threads, path) };
    }
    let mut is_kept = vec![false; rows];
    for &r in &kept {
        is_kept[r] = true;
    }
    for (w, out) in weights.iter().zip(outputs) {
        for r in (0..rows).filter(|&r| !is_kept[r]) {
            unsafe { std::ptr::write_bytes(out.0.add(r * w.n_out), 0, w.n_out) };
        }
    }
    if kept.is_empty() {
        return Ok(());
    }
    if kept.iter().enumerate().all(|(i, &r)| i == r) {
        // The real rows lead (one sequence, or every later one empty): the outputs' first rows.
        return unsafe {
            block_matmul(
                &x[..kept.len() * n_in],
                kept.len(),
                weights,
                outputs,
                threads,
                path,
            )
        };
    }
    // Row by row as slices (memcpy), and results left unwritten until the product fills them:
    // element-wise packing and zeroed results were 8% of a packed 8-prompt prefill's samples.
    let mut packed: Vec<f32> = Vec::with_capacity(kept.len() * n_in);
    for &r in &kept {
        packed.extend_from_slice(&x[r * n_in..(r + 1) * n_in]);
    }
    let mut results: Vec<Vec<f32>> = weights
        .iter()
        .map(|w| Vec::with_capacity(kept.len() * w.n_out))
        .collect();
    let packed_outputs: Vec<Output> = results.iter_mut().map(|v| Output(v.as_mut_ptr())).collect();
    unsafe { block_matmul(&packed, kept.len(), weights, &packed_outputs, threads, path)? };
    for (w, result) in weights.iter().zip(&mut results) {
        // SAFETY: block_matmul wrote all kept.len() · n_out values of each result.
        unsafe { result.set_len(kept.len() * w.n_out) };
    }
    for ((w, out), result) in weights.iter().zip(outputs).zip(&results) {
        for (i, &r) in kept.iter().enumerate() {
            let from = &result[i * w.n_out..(i + 1) * w.n_out];
            unsafe {
                std::ptr::copy_nonoverlapping(from.as_ptr(), out.0.add(r * w.n_out), w.n_out)
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::block_tests::{random_weight, Noise};
    use crate::kernels::ggml::GgmlType;

    fn product(x: &[f32], rows: usize, weights: &[BlockWeight]) -> Vec<Vec<f32>> {
        let mut results: Vec<Vec<f32>> = weights
            .iter()
            .map(|w| vec![f32::NAN; rows * w.n_out])
            .collect();
        let outputs: Vec<Output> = results.iter_mut().map(|v| Output(v.as_mut_ptr())).collect();
        unsafe { block_matmul(x, rows, weights, &outputs, 2, Path::Fast).unwrap() };
        results
    }

    #[test]
    fn real_rows_match_the_full_product_and_padding_is_zero() {
        let (n_in, seq) = (256, 7);
        let datas: Vec<(GgmlType, Vec<u8>, usize)> = [(GgmlType::F16, 40), (GgmlType::Q4K, 24)]
            .iter()
            .enumerate()
            .map(|(i, &(ty, n_out))| (ty, random_weight(ty, n_out, n_in, 7 + i as u64), n_out))
            .collect();
        for (ty, data, n_out) in &datas {
            let weights = [BlockWeight::new(*ty, data, n_in, *n_out).unwrap()];
            for real in [
                vec![7],
                vec![3],
                vec![0],
                vec![2, 7, 0],
                vec![5, 1],
                vec![7, 7],
                vec![9, 4],
            ] {
                let rows = real.len() * seq;
                let x = Noise::new(rows as u64).floats(rows * n_in);
                let full = product(&x, rows, &weights);
                let mut got = vec![f32::NAN; rows * n_out];
                let outputs = [Output(got.as_mut_ptr())];
                unsafe {
                    block_matmul_real_rows(&x, seq, &real, &weights, &outputs, 2, Path::Fast)
                        .unwrap()
                };
                for r in 0..rows {
                    let is_real = r % seq < real[r / seq].min(seq);
                    let row = &got[r * n_out..(r + 1) * n_out];
                    let want = &full[0][r * n_out..(r + 1) * n_out];
                    if is_real {
                        assert_eq!(row, want, "{ty:?} real {real:?} row {r}");
                    } else {
                        assert!(
                            row.iter().all(|&v| v == 0.0),
                            "{ty:?} padding row {r} not zero"
                        );
                    }
                }
            }
        }
    }
}
