//! The K-quant decode kernel at the largest sums its 16-bit scale products allow, against the portable path.

use super::block_matmul::{block_matmul, Output, Path};
use super::ggml::{BlockWeight, GgmlType};

/// Every quant at its maximum (all bits set: nibbles 15, 6-bit scales 63, Q6_K at 63) and
/// every activation at ±127, so each sub-block sum reaches its bound; small f16 factors.
fn saturated(ty: GgmlType, n_out: usize, n_in: usize) -> Vec<u8> {
    let mut data = vec![0xffu8; ty.row_bytes(n_in).unwrap() * n_out];
    let f16 = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let fields: &[usize] = if ty == GgmlType::Q6K { &[208] } else { &[0, 2] };
    for block in 0..data.len() / ty.block_bytes() {
        for &f in fields {
            let at = block * ty.block_bytes() + f;
            data[at..at + 2].copy_from_slice(&f16);
        }
    }
    data
}

#[test]
fn the_largest_sums_give_the_portable_result_for_every_row_count() {
    let n_in = 512;
    for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
        let data = saturated(ty, 40, n_in);
        let w = BlockWeight::new(ty, &data, n_in, 40).unwrap();
        for rows in 1..=8 {
            // Equal values of one sign round to -127 (or 127) everywhere.
            let x: Vec<f32> = (0..rows * n_in)
                .map(|i| if (i / n_in) % 2 == 0 { 1.0 } else { -1.0 })
                .collect();
            let run = |path| {
                let mut out = vec![f32::NAN; rows * 40];
                let outs = [Output(out.as_mut_ptr())];
                unsafe { block_matmul(&x, rows, &[w], &outs, 1, path).unwrap() };
                out
            };
            let (fast, portable) = (run(Path::Fast), run(Path::Portable));
            assert_eq!(fast, portable, "{} rows {rows}", ty.name());
        }
    }
}
